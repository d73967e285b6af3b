#!/usr/bin/env python3
"""A clean-room Stratum V1 scrypt client, written from the protocol alone.

It shares no code with Otedama: hashing comes from Python's hashlib, and the header is
assembled the way cpuminer assembles it (prevhash words byte-swapped, version, ntime and
nbits big-endian hex, nonce submitted as big-endian hex of the header's little-endian
word). It mines one real share (on regtest, also a block), then checks that the pool
answers each kind of bad input with the right Stratum error code.

usage: stratum_client.py HOST PORT WORKER
Exits 0 when every check passed; prints one JSON line of results.
"""

import hashlib
import json
import socket
import struct
import sys

DIFF1_SCRYPT = 0xFFFF * 2**224


def sha256d(data):
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


class Client:
    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=30)
        self.buffer = b""
        self.next_id = 1
        self.job = None
        self.difficulty = 1.0
        self.jobs_seen = 0
        # JSON-RPC matches replies by id, not by order: a pool may answer a rejected share
        # before an accepted one that is still being written to disk.
        self.replies = {}

    def send(self, obj):
        self.sock.sendall((json.dumps(obj) + "\n").encode())

    def read(self):
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("pool closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        message = json.loads(line)
        if message.get("method") == "mining.notify":
            self.job = message["params"]
            self.jobs_seen += 1
        elif message.get("method") == "mining.set_difficulty":
            self.difficulty = message["params"][0]
        return message

    def request(self, method, params):
        request_id = self.next_id
        self.next_id += 1
        self.send({"id": request_id, "method": method, "params": params})
        return self.reply(request_id)

    def reply(self, request_id):
        while request_id not in self.replies:
            message = self.read()
            if "method" not in message and message.get("id") is not None:
                self.replies[message["id"]] = message
        return self.replies.pop(request_id)


def header_for(job, extranonce1, extranonce2, nonce):
    job_id, prevhash, coinb1, coinb2, branch, version, nbits, ntime, _clean = job
    coinbase = bytes.fromhex(coinb1) + extranonce1 + extranonce2 + bytes.fromhex(coinb2)
    root = sha256d(coinbase)
    for sibling in branch:
        root = sha256d(root + bytes.fromhex(sibling))
    prev = bytes.fromhex(prevhash)
    prev = b"".join(prev[i:i + 4][::-1] for i in range(0, 32, 4))
    return (struct.pack("<I", int(version, 16)) + prev + root
            + struct.pack("<I", int(ntime, 16)) + struct.pack("<I", int(nbits, 16))
            + struct.pack("<I", nonce))


def pow_value(header):
    digest = hashlib.scrypt(header, salt=header, n=1024, r=1, p=1, dklen=32)
    return int.from_bytes(digest, "little")


def network_target(job):
    bits = int(job[6], 16)
    return (bits & 0xFFFFFF) << (8 * ((bits >> 24) - 3))


def find_nonce(job, extranonce1, extranonce2, difficulty, want_valid=True):
    """A nonce that meets the share target, or (want_valid=False) one that meets neither it
    nor the network's: on regtest a hash below the share target is often a block, which the
    pool rightly submits though it refuses the share."""
    target = int(DIFF1_SCRYPT / difficulty)
    for nonce in range(0, 1 << 32):
        value = pow_value(header_for(job, extranonce1, extranonce2, nonce))
        if want_valid and value <= target:
            return nonce
        if not want_valid and value > target and value > network_target(job):
            return nonce
    raise RuntimeError("nonce space exhausted")


def submit_params(worker, job, extranonce2, nonce):
    return [worker, job[0], extranonce2.hex(), job[7], "%08x" % nonce]


def main():
    host, port, worker = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    results = {}

    # 25: a submit before subscribe, on a fresh connection.
    early = Client(host, port)
    reply = early.request("mining.submit", [worker, "1", "00000000", "00000000", "00000000"])
    results["submit_before_subscribe"] = reply["error"][0] if reply.get("error") else None

    client = Client(host, port)
    subscribe = client.request("mining.subscribe", ["clean-room/1.0"])
    extranonce1 = bytes.fromhex(subscribe["result"][1])
    extranonce2_size = subscribe["result"][2]
    authorize = client.request("mining.authorize", [worker, "x"])
    results["authorize"] = authorize["result"]
    while client.job is None:
        client.read()

    # Overlong and non-JSON lines close that connection only; this one carries on below.
    for garbage in (b"x" * 5000 + b"\n", b"GET / HTTP/1.1\r\n\r\n"):
        bad = Client(host, port)
        bad.sock.sendall(garbage)
        try:
            closed = bad.sock.recv(1024) == b""
        except ConnectionResetError:
            closed = True
        results.setdefault("bad_lines_closed", []).append(closed)

    # 20: an unknown method; the connection stays open.
    reply = client.request("mining.fly", [])
    results["unknown_method"] = reply["error"][0]

    # A real share, then the same share again in the same write: 22.
    extranonce2 = (1).to_bytes(extranonce2_size, "big")
    job = client.job
    nonce = find_nonce(job, extranonce1, extranonce2, client.difficulty)
    first = {"id": 1000, "method": "mining.submit", "params": submit_params(worker, job, extranonce2, nonce)}
    again = dict(first, id=1001, params=submit_params(worker, job, extranonce2, nonce)[:4] + ["%08X" % nonce])
    # On regtest that share is a block, and the pool's next job may arrive before the
    # replies do: count jobs from before the submit.
    seen = client.jobs_seen
    client.sock.sendall((json.dumps(first) + "\n" + json.dumps(again) + "\n").encode())
    results["valid_share"] = client.reply(1000)["result"]
    duplicate = client.reply(1001)
    results["duplicate"] = duplicate["error"][0] if duplicate.get("error") else None

    # Wait for the job that follows the block.
    while client.jobs_seen == seen:
        client.read()
    job = client.job

    # 23: a share that misses the target.
    extranonce2 = (2).to_bytes(extranonce2_size, "big")
    bad_nonce = find_nonce(job, extranonce1, extranonce2, client.difficulty, want_valid=False)
    reply = client.request("mining.submit", submit_params(worker, job, extranonce2, bad_nonce))
    results["low_difficulty"] = reply["error"][0]

    # 21: a job the pool never sent.
    reply = client.request("mining.submit", [worker, "abcdef123", extranonce2.hex(), job[7], "00000000"])
    results["unknown_job"] = reply["error"][0]

    # 20: extranonce2 one byte short.
    reply = client.request("mining.submit", [worker, job[0], extranonce2.hex()[2:], job[7], "00000000"])
    results["bad_extranonce2"] = reply["error"][0]

    # 24: a worker this connection never authorized.
    reply = client.request("mining.submit", ["somebody.else", job[0], extranonce2.hex(), job[7], "00000000"])
    results["unauthorized_worker"] = reply["error"][0]

    expected = {
        "submit_before_subscribe": 25, "authorize": True, "unknown_method": 20,
        "bad_lines_closed": [True, True],
        "valid_share": True, "duplicate": 22, "low_difficulty": 23, "unknown_job": 21,
        "bad_extranonce2": 20, "unauthorized_worker": 24,
    }
    print(json.dumps({"results": results, "expected": expected}))
    sys.exit(0 if results == expected else 1)


if __name__ == "__main__":
    main()
