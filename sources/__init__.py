"""Price sources: each serves ticks as SSE at /stream (see sources.feed)."""
