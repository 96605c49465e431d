"""HTTP clients: :mod:`~envhub.http.transport` (envhub's own small HTTP/1.1 client, for plain http and
Unix sockets: the session client and plain-http chat endpoints) and :mod:`~envhub.http.chat`
(OpenAI-compatible chat calls with retries, used by evaluation and judges)."""
