"""The search service: a FastAPI app over a collection, and its page."""
