#!/usr/bin/env python3
"""Attacks on a pool's sockets, from loopback only, bounded in count and time.

Each attack opens its connections from source addresses in 127.0.0.0/8, holds them for
--duration seconds (or until the pool closes them) and prints one JSON line: how many it
opened, how many the pool closed and after how long, and how many were still open at the
end. It never targets anything but 127.0.0.0/8.

  stratum-idle       connect and say nothing (a connection flood)
  stratum-slowloris  subscribe and authorize, then trickle half a request a byte a second
  http-slowloris     send half a request line, then a byte a second
  api-flood          as many GET /api/v1/stats as --connections clients can send
"""

import argparse
import asyncio
import ipaddress
import json
import resource
import socket
import sys
import time


def loopback(text):
    address = ipaddress.ip_address(text)
    if address not in ipaddress.ip_network("127.0.0.0/8"):
        raise argparse.ArgumentTypeError("targets and sources must be in 127.0.0.0/8")
    return str(address)


def parse():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("attack", choices=["stratum-idle", "stratum-slowloris", "http-slowloris", "api-flood"])
    parser.add_argument("--host", type=loopback, default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--first-source", type=loopback, default="127.0.1.1")
    parser.add_argument("--sources", type=int, default=1, help="source addresses to spread over")
    parser.add_argument("--worker", default="bcrt1qqypqxpq9qcrsszg2pvxq6rs0zqg3yyc5phstwt.attacker")
    args = parser.parse_args()
    if args.connections > 15000 or args.duration > 600:
        parser.error("bounded: at most 15000 connections and 600 s")
    return args


async def open_from(args, index):
    first = ipaddress.ip_address(args.first_source)
    source = str(first + (index % args.sources))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.bind((source, 0))
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (args.host, args.port))
    return sock


async def hold(args, sock, opening, trickle):
    """Sends `opening`, then `trickle` once a second; returns the seconds until the pool
    closed the connection, or None if it was still open at the end."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    deadline = started + args.duration
    try:
        if opening:
            await loop.sock_sendall(sock, opening)
        while time.monotonic() < deadline:
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout=1.0)
                if not data:
                    return time.monotonic() - started
            except asyncio.TimeoutError:
                pass
            if trickle:
                await loop.sock_sendall(sock, trickle)
        return None
    except (ConnectionError, OSError):
        return time.monotonic() - started
    finally:
        sock.close()


async def one(args, index, results):
    try:
        sock = await open_from(args, index)
    except OSError as error:
        results["connect_errors"] += 1
        results.setdefault("connect_error", str(error))
        return
    results["opened"] += 1
    if args.attack == "stratum-idle":
        closed_after = await hold(args, sock, b"", b"")
    elif args.attack == "stratum-slowloris":
        login = (
            b'{"id":1,"method":"mining.subscribe","params":[]}\n'
            + json.dumps({"id": 2, "method": "mining.authorize", "params": [args.worker, "x"]}).encode()
            + b'\n{"id":3,"method":"mining.'
        )
        closed_after = await hold(args, sock, login, b"x")
    else:
        closed_after = await hold(args, sock, b"GET /api/v1/stats HTTP/1.1\r\nHo", b"x")
    if closed_after is None:
        results["still_open"] += 1
    else:
        results["closed_by_pool"] += 1
        results["closed_after_s"].append(closed_after)


async def api_flood(args, results):
    deadline = time.monotonic() + args.duration

    async def client(index):
        while time.monotonic() < deadline:
            try:
                sock = await open_from(args, index)
            except OSError:
                results["connect_errors"] += 1
                await asyncio.sleep(0.05)
                continue
            loop = asyncio.get_running_loop()
            try:
                await loop.sock_sendall(sock, b"GET /api/v1/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                answer = b""
                while True:
                    data = await asyncio.wait_for(loop.sock_recv(sock, 65536), timeout=10)
                    if not data:
                        break
                    answer += data
                if answer.startswith(b"HTTP/1.1 200"):
                    results["answered"] += 1
                else:
                    results["refused"] += 1
            except (OSError, asyncio.TimeoutError):
                results["refused"] += 1
            finally:
                sock.close()

    await asyncio.gather(*(client(index) for index in range(args.connections)))


async def main():
    args = parse()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results = {"attack": args.attack, "opened": 0, "connect_errors": 0, "closed_by_pool": 0,
               "still_open": 0, "closed_after_s": [], "answered": 0, "refused": 0}
    started = time.monotonic()
    if args.attack == "api-flood":
        await api_flood(args, results)
    else:
        await asyncio.gather(*(one(args, index, results) for index in range(args.connections)))
    closed = sorted(results.pop("closed_after_s"))
    if closed:
        results["closed_after_s_median"] = round(closed[len(closed) // 2], 2)
        results["closed_after_s_max"] = round(closed[-1], 2)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(results))


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
