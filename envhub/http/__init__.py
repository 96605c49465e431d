"""HTTP clients: :mod:`~envhub.http.lean` (a small HTTP/1.1 client for loopback and Unix sockets) and
:mod:`~envhub.http.chat` (OpenAI-compatible chat calls with retries, used by evaluation and judges)."""
