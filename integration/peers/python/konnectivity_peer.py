#!/usr/bin/env python3
"""A Konnectivity gRPC client on grpcio (gRPC C core), driven by the
integration tests against the real tunnel-server.

Same modes and JSON output as the Go peer (integration/peers/konnectivity-go):

    konnectivity_peer.py --uds SOCK MODE [flags]
    konnectivity_peer.py --tcp HOST:PORT --ca CA --cert CRT --key KEY MODE [flags]

Over the Unix socket the channel sets ``grpc.default_authority`` to the socket
path, so :authority is what kube-apiserver's grpc-go sends. Every dial gets
its own channel with a local subchannel pool: one connection and one Proxy
stream per dial, as kube-apiserver does (grpcio would otherwise share one
connection between channels with the same target).

Packets are encoded by hand (proto3 wire format, no generated code).
"""

import argparse
import asyncio
import hashlib
import json
import random as rnd
import sys
import time

import grpc

DIAL_REQ, DIAL_RSP, CLOSE_REQ, CLOSE_RSP, DATA, DIAL_CLS, DRAIN = range(7)
# Oneof field number of each packet type's payload.
PAYLOAD_FIELD = {DIAL_REQ: 2, DIAL_RSP: 3, DATA: 4, CLOSE_REQ: 5, CLOSE_RSP: 6, DIAL_CLS: 7, DRAIN: 8}
MAX_MESSAGE = 4 << 20


# --- proto3 wire format ----------------------------------------------------

def varint(v):
    v &= (1 << 64) - 1  # negative int64: ten bytes, two's complement
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_int(n, v):
    return b"" if v == 0 else varint(n << 3) + varint(v)


def field_bytes(n, v):
    return b"" if not v else varint(n << 3 | 2) + varint(len(v)) + v


def encode(ptype, **f):
    """Packet{type, payload} with the payload's fields by name."""
    if ptype == DIAL_REQ:
        inner = (field_bytes(1, f.get("protocol", "").encode()) + field_bytes(2, f["address"].encode())
                 + field_int(3, f.get("random", 0)))
    elif ptype == DATA:
        inner = field_int(1, f["connect_id"]) + field_bytes(3, f.get("data", b""))
    elif ptype == CLOSE_REQ:
        inner = field_int(1, f["connect_id"])
    elif ptype == DIAL_CLS:
        inner = field_int(1, f["random"])
    else:
        inner = b""
    return field_int(1, ptype) + varint(PAYLOAD_FIELD[ptype] << 3 | 2) + varint(len(inner)) + inner


def read_varint(b, i):
    shift = v = 0
    while True:
        if i >= len(b):
            raise ValueError("truncated varint")
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return v, i


def fields(b):
    """(number, value) for every field; varints as int, length-delimited as bytes."""
    i = 0
    while i < len(b):
        key, i = read_varint(b, i)
        n, wt = key >> 3, key & 7
        if wt == 0:
            v, i = read_varint(b, i)
        elif wt == 2:
            ln, i = read_varint(b, i)
            v, i = b[i:i + ln], i + ln
        elif wt == 1:
            v, i = b[i:i + 8], i + 8
        elif wt == 5:
            v, i = b[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wt}")
        yield n, v


def signed(v):
    return v - (1 << 64) if v >= 1 << 63 else v


# Field names of each payload message, by field number.
PAYLOAD_NAMES = {
    2: {1: "protocol", 2: "address", 3: "random"},
    3: {1: "error", 2: "connect_id", 3: "random"},
    4: {1: "connect_id", 2: "error", 3: "data"},
    5: {1: "connect_id"},
    6: {1: "error", 2: "connect_id"},
    7: {1: "random"},
    8: {},
}


def decode(b):
    p = {"type": 0, "error": "", "connect_id": 0, "random": 0, "data": b""}
    for n, v in fields(b):
        if n == 1 and isinstance(v, int):
            p["type"] = v
        elif n in PAYLOAD_NAMES and isinstance(v, bytes):
            for m, x in fields(v):
                name = PAYLOAD_NAMES[n].get(m)
                if name in ("error", "protocol", "address") and isinstance(x, bytes):
                    p[name] = x.decode()
                elif name == "data" and isinstance(x, bytes):
                    p[name] = x
                elif name in ("connect_id", "random") and isinstance(x, int):
                    p[name] = signed(x)
    return p


# --- one tunnel -----------------------------------------------------------

class Tunnel:
    """One channel (connection) with one /ProxyService/Proxy call."""

    def __init__(self, args):
        opts = [("grpc.use_local_subchannel_pool", 1)]
        if args.uds:
            opts.append(("grpc.default_authority", args.uds))
            self.channel = grpc.aio.insecure_channel("unix:" + args.uds, options=opts)
        else:
            with open(args.ca, "rb") as f:
                ca = f.read()
            with open(args.cert, "rb") as f:
                cert = f.read()
            with open(args.key, "rb") as f:
                key = f.read()
            creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
            self.channel = grpc.aio.secure_channel(args.tcp, creds, options=opts)
        self.call = None
        self.code, self.message, self.ended, self.largest = None, "", False, 0

    async def start(self):
        """Waits for the connection (as grpc-go's WithBlock does), then opens the call."""
        await asyncio.wait_for(self.channel.channel_ready(), 10)
        self.call = self.channel.stream_stream(
            "/ProxyService/Proxy", request_serializer=bytes, response_deserializer=bytes)()

    async def send(self, ptype, **f):
        await self.call.write(encode(ptype, **f))

    async def recv(self):
        """The next packet, or None once the call ended (see code, message)."""
        if self.ended:
            return None
        try:
            msg = await self.call.read()
        except grpc.aio.AioRpcError as e:
            self.ended, self.code, self.message = True, e.code().value[0], e.details() or ""
            return None
        if msg is grpc.aio.EOF:
            self.ended = True
            self.code = (await self.call.code()).value[0]
            self.message = await self.call.details() or ""
            return None
        self.largest = max(self.largest, len(msg))
        return decode(msg)

    async def dial(self, address, random):
        await self.send(DIAL_REQ, protocol="tcp", address=address, random=random)
        while True:
            p = await self.recv()
            if p is None:
                raise RuntimeError(f"call ended before DIAL_RSP: {self.code}: {self.message}")
            if p["type"] == DIAL_RSP:
                return p

    async def close_req(self, cid):
        """CLOSE_REQ and read to CLOSE_RSP; returns DATA bytes dropped on the way."""
        await self.send(CLOSE_REQ, connect_id=cid)
        dropped = 0
        while True:
            p = await self.recv()
            if p is None:
                raise RuntimeError(f"call ended before CLOSE_RSP: {self.code}: {self.message}")
            if p["type"] == CLOSE_RSP:
                if p["connect_id"] != cid:
                    raise RuntimeError(f"CLOSE_RSP for {p['connect_id']}, want {cid}")
                return dropped
            if p["type"] == DATA:
                dropped += len(p["data"])

    async def finish(self):
        try:
            await self.call.done_writing()
        except grpc.aio.AioRpcError:
            pass
        while await self.recv() is not None:
            pass

    async def close(self):
        if self.call is not None:
            self.call.cancel()
        await self.channel.close()


async def opened(args):
    t = Tunnel(args)
    try:
        await t.start()
    except BaseException:
        await t.close()
        raise
    return t


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# --- modes ----------------------------------------------------------------

async def echo_once(args, i):
    t = await opened(args)
    try:
        random = 42 if i % 2 == 0 else -i  # old clients reuse one random
        rsp = await t.dial(args.target, random)
        if rsp["error"] or rsp["random"] != random or rsp["connect_id"] == 0:
            raise RuntimeError(f"DIAL_RSP {rsp} for random {random}")
        c = rsp["connect_id"]
        msg = f"ping {i}".encode()
        await t.send(DATA, connect_id=c, data=msg)
        got = b""
        while len(got) < len(msg):
            p = await t.recv()
            if p is None or p["type"] != DATA or p["connect_id"] != c:
                raise RuntimeError(f"expected echoed DATA, got {p} (status {t.code})")
            got += p["data"]
        if got != msg:
            raise RuntimeError(f"echo {got!r}, sent {msg!r}")
        dropped = await t.close_req(c)
        if dropped:
            raise RuntimeError(f"{dropped} bytes after the echo")
        await t.finish()
        if t.code != 0:
            raise RuntimeError(f"call ended with {t.code}: {t.message}")
        return c
    finally:
        await t.close()


async def mode_echo(args):
    ids, took, failures = set(), [], []
    queue = list(range(args.n))

    async def worker():
        while queue:
            i = queue.pop(0)
            t0 = time.monotonic()
            try:
                ids.add(await echo_once(args, i))
                took.append(time.monotonic() - t0)
            except Exception as e:  # reported, the test asserts on it
                failures.append(f"dial {i}: {e!r}")

    await asyncio.gather(*(worker() for _ in range(args.parallel)))
    took.sort()
    pct = (lambda p: int(took[int(p * (len(took) - 1))] * 1e6)) if took else (lambda p: 0)
    emit({"mode": "echo", "dials": args.n, "ok": len(took), "unique_ids": len(ids),
          "failures": failures[:5], "p50_us": pct(0.5), "p99_us": pct(0.99)})


async def mode_download(args):
    t = await opened(args)
    try:
        rsp = await t.dial(args.target, 1)
        if rsp["error"]:
            raise RuntimeError(f"dial failed: {rsp['error']}")
        h, total, t0 = hashlib.sha256(), 0, time.monotonic()
        while True:
            p = await t.recv()
            if p is None:
                raise RuntimeError(f"call ended before CLOSE_RSP after {total} bytes: {t.code}: {t.message}")
            if p["type"] == DATA:
                h.update(p["data"])
                total += len(p["data"])
            elif p["type"] == CLOSE_RSP and p["connect_id"] == rsp["connect_id"]:
                break
        secs = time.monotonic() - t0
        await t.finish()
        emit({"mode": "download", "bytes": total, "sha256": h.hexdigest(), "largest_message": t.largest,
              "secs": secs, "code": t.code, "message": t.message})
    finally:
        await t.close()


def data_message_size(cid, n):
    return len(encode(DATA, connect_id=cid, data=b"\0" * n))


async def mode_upload(args):
    t = await opened(args)
    try:
        rsp = await t.dial(args.target, 2)
        if rsp["error"]:
            raise RuntimeError(f"dial failed: {rsp['error']}")
        c = rsp["connect_id"]
        if args.chunk == "max":
            # Envelope overhead does not depend on n within a varint size class.
            chunk = MAX_MESSAGE - (data_message_size(c, MAX_MESSAGE) - MAX_MESSAGE)
            while data_message_size(c, chunk) > MAX_MESSAGE:
                chunk -= 1
        else:
            chunk = int(args.chunk)
        size = args.bytes or chunk
        data = rnd.Random(size).randbytes(size)
        sent = hashlib.sha256(data).hexdigest()
        t0 = time.monotonic()

        async def sender():
            for off in range(0, size, chunk):
                await t.send(DATA, connect_id=c, data=data[off:off + chunk])

        task = asyncio.create_task(sender())
        h, echoed = hashlib.sha256(), 0
        while echoed < size:
            p = await t.recv()
            if p is None:
                break
            if p["type"] == DATA:
                h.update(p["data"])
                echoed += len(p["data"])
        secs = time.monotonic() - t0
        result = {"mode": "upload", "bytes": size, "echoed": echoed, "secs": secs,
                  "message_size": data_message_size(c, chunk), "sent_sha256": sent,
                  "echoed_sha256": h.hexdigest(), "largest_message": t.largest}
        if not t.ended:
            await task
            await t.close_req(c)
            await t.finish()
        else:
            task.cancel()
        result["code"], result["message"] = t.code, t.message
        emit(result)
    finally:
        await t.close()


async def mode_dial(args):
    t = await opened(args)
    try:
        rsp = await t.dial(args.target, args.random)
        if not rsp["error"]:
            await t.close_req(rsp["connect_id"])
        await t.finish()
        emit({"mode": "dial", "error": rsp["error"], "connect_id": rsp["connect_id"],
              "random": rsp["random"], "code": t.code, "message": t.message})
    finally:
        await t.close()


async def mode_dialcls(args):
    t = await opened(args)
    try:
        await t.send(DIAL_REQ, protocol="tcp", address=args.target, random=args.random)
        await asyncio.sleep(args.wait_ms / 1000)
        t0 = time.monotonic()
        await t.send(DIAL_CLS, random=args.random)

        async def drain():
            types = []
            while (p := await t.recv()) is not None:
                types.append(p["type"])
            return types

        try:
            types = await asyncio.wait_for(drain(), 5)
            emit({"mode": "dialcls", "ended": True, "ended_ms": int((time.monotonic() - t0) * 1000),
                  "packets": types, "code": t.code, "message": t.message})
        except asyncio.TimeoutError:
            emit({"mode": "dialcls", "ended": False})
    finally:
        await t.close()


async def mode_hold(args):
    t = await opened(args)
    rsp = await t.dial(args.target, 3)
    if rsp["error"]:
        raise RuntimeError(f"dial failed: {rsp['error']}")
    await t.send(DATA, connect_id=rsp["connect_id"], data=b"hello")
    n = 0
    while n < 3:
        p = await t.recv()
        if p is None:
            raise RuntimeError(f"call ended: {t.code}: {t.message}")
        n += p["type"] == DATA
    emit({"event": "receiving", "connect_id": rsp["connect_id"]})
    await asyncio.sleep(60)  # bounded: the test kills this process long before
    raise RuntimeError("not killed within 60 s")


MODES = {"echo": mode_echo, "download": mode_download, "upload": mode_upload, "dial": mode_dial,
         "dialcls": mode_dialcls, "hold": mode_hold}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uds")
    ap.add_argument("--tcp")
    ap.add_argument("--ca")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("mode", choices=sorted(MODES))
    ap.add_argument("--target", default="")
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--bytes", type=int, default=0)
    ap.add_argument("--chunk", default="32768")
    ap.add_argument("--random", type=int, default=7)
    ap.add_argument("--wait-ms", type=int, default=300)
    args = ap.parse_args()
    if not args.uds and not args.tcp:
        ap.error("--uds or --tcp is required")
    try:
        asyncio.run(MODES[args.mode](args))
    except Exception as e:
        print(f"konnectivity_peer.py: {e!r}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
