"""A Starlette app under uvicorn with several workers, sharing state through aioipc."""
