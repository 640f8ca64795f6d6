"""A FastAPI service for the ASGI end-to-end test: a route with a parameter, an exception, a
streamed response and a call out (from a sync endpoint, in Starlette's thread pool) to itself."""
import asyncio
import os
import urllib.request

from fastapi import FastAPI
from fastapi.responses import StreamingResponse

app = FastAPI()


@app.get("/items/{item_id}")
async def item(item_id: int):
    await asyncio.sleep(0.01)
    return {"item": item_id, "pid": os.getpid()}


@app.get("/boom")
async def boom():
    raise RuntimeError("boom in the app")


@app.get("/stream")
async def stream():
    async def chunks():
        for i in range(3):
            await asyncio.sleep(0.1)
            yield b"chunk %d\n" % i
    return StreamingResponse(chunks(), media_type="text/plain")


@app.get("/call")
def call(port: int):
    with urllib.request.urlopen("http://127.0.0.1:%d/items/7" % port, timeout=10) as r:
        return {"status": r.status}
