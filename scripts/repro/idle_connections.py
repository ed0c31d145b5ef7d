#!/usr/bin/env python3
"""Worker RSS per idle connection (docs/realtime.md): opens N connections to
a running `orderflow run` and reports its RSS before and after.

  python3 scripts/repro/idle_connections.py PORT PID N KIND
  KIND: idle (connected, no request), healthz (one request, kept alive),
        sse (a user stream, held open after its snapshot)
"""
import asyncio, sys, os, time
PORT=int(sys.argv[1]); PID=int(sys.argv[2]); N=int(sys.argv[3]); KIND=sys.argv[4]
def rss():
    for l in open(f"/proc/{PID}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])/1024
async def one(i, conns):
    r, w = await asyncio.open_connection("127.0.0.1", PORT)
    if KIND == "sse":
        w.write(f"GET /users/{9000000+i}/orders/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await w.drain(); await r.readuntil(b"snapshot")
    elif KIND == "healthz":
        w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); await w.drain(); await r.readuntil(b"ok")
    conns.append((r, w))
async def main():
    conns=[]
    before=rss()
    for start in range(0, N, 500):
        await asyncio.gather(*(one(i, conns) for i in range(start, min(N, start+500))))
    await asyncio.sleep(3)
    after=rss()
    print(f"{KIND}: {N} conns: {before:.1f} -> {after:.1f} MB, {(after-before)*1024/N:.1f} KB each")
asyncio.run(main())
