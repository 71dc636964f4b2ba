"""The avatar service: an HTTP API (FastAPI on uvicorn) and the web app, over the application layer."""
