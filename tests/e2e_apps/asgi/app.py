"""A FastAPI service for the ASGI end-to-end test: a route with a parameter, an exception, a
streamed response, a call out (from a sync endpoint, in Starlette's thread pool) to itself, and
calls out with the async clients (httpx, aiohttp) from the event loop."""
import asyncio
import os
import urllib.request

import aiohttp
import httpx

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


@app.get("/call-async")
async def call_async(port: int):
    async with httpx.AsyncClient() as c:
        a = await c.get("http://127.0.0.1:%d/items/8" % port)
    async with aiohttp.ClientSession() as s:
        async with s.get("http://127.0.0.1:%d/items/9" % port) as r:
            b = r.status
    return {"httpx": a.status_code, "aiohttp": b}
