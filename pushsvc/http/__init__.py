"""The HTTP edge: the site, its connections' bounds and caps, trusted proxies, JSON helpers."""
