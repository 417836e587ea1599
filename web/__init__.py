"""The review page: a static single page (``web/static``) and the small loopback server that serves it."""
