#!/usr/bin/env python3
"""The defects of issue 12 replayed against a running precall (black box).

Usage: abuse.py SIP_HOST:PORT HTTP_HOST:PORT
Each attack runs; afterwards (and in between) OPTIONS and /health must answer.
Exits non-zero with the reason on the first failure.
"""
import socket, sys, time, random, struct, threading, urllib.request

sip_host, sip_port = sys.argv[1].rsplit(":", 1)
sip = (sip_host, int(sip_port))
http_host, http_port = sys.argv[2].rsplit(":", 1)
http = (http_host, int(http_port))


def fail(why):
    print(f"abuse.py: FAILED: {why}", flush=True)
    sys.exit(1)


def request(method, call_id, local, cseq=1, extra="", body="", to_tag=""):
    tag = f";tag={to_tag}" if to_tag else ""
    ct = "Content-Type: application/sdp\r\n" if body else ""
    return (f"{method} sip:precall@{sip[0]}:{sip[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK-{random.getrandbits(48):x};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:+15557770000@{local[0]}>;tag=abuse\r\nTo: <sip:precall@{sip[0]}>{tag}\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContact: <sip:abuse@{local[0]}:{local[1]}>\r\n"
            f"{extra}{ct}Content-Length: {len(body)}\r\n\r\n{body}").encode()


def sdp(port):
    return (f"v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=sendrecv\r\n")


def recv_until(sock, pred, timeout):
    end = time.time() + timeout
    while time.time() < end:
        sock.settimeout(max(0.01, end - time.time()))
        try:
            data, _ = sock.recvfrom(65536)
        except socket.timeout:
            return None
        text = data.decode(errors="replace")
        if pred(text):
            return text
    return None


def header(text, name):
    for line in text.split("\r\n"):
        if line.lower().startswith(name.lower() + ":"):
            return line.split(":", 1)[1].strip()
    return None


def healthy(label):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    t0 = time.time()
    s.sendto(request("OPTIONS", f"opt-{random.getrandbits(32)}", s.getsockname()), sip)
    r = recv_until(s, lambda t: t.startswith("SIP/2.0 "), 2)
    if not r or not r.startswith("SIP/2.0 200"):
        fail(f"{label}: OPTIONS got no 200")
    rtt = time.time() - t0
    try:
        code = urllib.request.urlopen(f"http://{http[0]}:{http[1]}/health", timeout=3).status
    except Exception as e:  # noqa: BLE001
        fail(f"{label}: /health failed: {e}")
    if code != 200:
        fail(f"{label}: /health {code}")
    print(f"   {label}: OPTIONS 200 in {rtt * 1000:.1f} ms, /health 200", flush=True)


def call(extra="", offer=True, ack_body=True):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))
    cid = f"abuse-{random.getrandbits(40):x}"
    s.sendto(request("INVITE", cid, s.getsockname(), extra=extra, body=sdp(rtp.getsockname()[1]) if offer else ""), sip)
    ok = recv_until(s, lambda t: t.startswith("SIP/2.0 2"), 3)
    if not ok:
        fail(f"no 200 to INVITE ({extra.strip() or 'plain'})")
    to_tag = header(ok, "To").split("tag=")[1].split(";")[0]
    body = sdp(rtp.getsockname()[1]) if (ack_body and not offer) else ""
    s.sendto(request("ACK", cid, s.getsockname(), body=body, to_tag=to_tag), sip)
    media_port = int(ok.split("m=audio ")[1].split(" ")[0])
    return s, rtp, cid, to_tag, ok, media_port


def bye(s, cid, to_tag):
    s.sendto(request("BYE", cid, s.getsockname(), cseq=2, to_tag=to_tag), sip)
    recv_until(s, lambda t: "BYE" in (header(t, "CSeq") or "") and t.startswith("SIP/2.0"), 2)


print("== 1. Session-Expires: 18446744073709551615", flush=True)
s, rtp, cid, tag, ok, _ = call("Supported: timer\r\nSession-Expires: 18446744073709551615\r\n")
granted = int((header(ok, "Session-Expires") or "0").split(";")[0])
if not 0 < granted <= 86400:
    fail(f"Session-Expires granted {granted}")
healthy("after the huge Session-Expires")
bye(s, cid, tag)

print("== 2. four delayed offers ACKed without an answer", flush=True)
calls = [call(offer=False, ack_body=False) for _ in range(4)]
for s, rtp, cid, tag, ok, _ in calls:
    b = recv_until(s, lambda t: t.startswith("BYE "), 3)
    if not b:
        fail("no BYE for an ACK without the SDP answer")
    reply = "SIP/2.0 200 OK\r\n" + "".join(f"{h}: {header(b, h)}\r\n" for h in ["Via", "From", "To", "Call-ID", "CSeq"]) + "Content-Length: 0\r\n\r\n"
    s.sendto(reply.encode(), sip)
healthy("after the SDP-less ACKs")

print("== 3. RTP from a third address (caller silent, then caller paused)", flush=True)
attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
attacker.bind(("127.0.0.1", 0))


def stream(sock, port, first, count, ssrc):
    for i in range(count):
        pkt = struct.pack("!BBHII", 0x80, 0, (first + i) & 0xFFFF, (first + i) * 160, ssrc) + b"\xff" * 160
        sock.sendto(pkt, ("127.0.0.1", port))
        time.sleep(0.02)


def arrivals(sock, window):
    sock.settimeout(0.05)
    n, end = 0, time.time() + window
    while time.time() < end:
        try:
            sock.recvfrom(2048)
            n += 1
        except socket.timeout:
            pass
    return n


s, rtp, cid, tag, ok, port = call()
stream(attacker, port, 1000, 25, 0xBAD)
if arrivals(attacker, 0.3):
    fail("a silent caller's media went to the attacker")
bye(s, cid, tag)
s, rtp, cid, tag, ok, port = call()
stream(rtp, port, 1, 10, 0x1234)
time.sleep(2.2)
stream(attacker, port, 5000, 25, 0xBAD)
if arrivals(attacker, 0.3):
    fail("a paused caller's media went to the attacker")
bye(s, cid, tag)
healthy("after the RTP hijack attempts")

print("== 4. slow and idle connections from 127.0.0.2: SIP TCP trickle, 300 idle HTTP connections", flush=True)
held = []
for _ in range(300):
    try:
        c = socket.create_connection(http, timeout=2, source_address=("127.0.0.2", 0))
        held.append(c)
    except OSError:
        pass
trickle = socket.create_connection(sip, timeout=2, source_address=("127.0.0.2", 0))
def trickler():
    msg = b"OPTIONS sip:precall SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bK-slow\r\n" * 10
    try:
        for b in msg:
            trickle.send(bytes([b]))
            time.sleep(0.05)
    except OSError:
        pass
threading.Thread(target=trickler, daemon=True).start()
healthy("with 300 idle HTTP connections and a trickling SIP TCP client")
for c in held:
    c.close()

print("== 5. admin key guessing", flush=True)
codes = {}
for i in range(30):
    req = urllib.request.Request(f"http://{http[0]}:{http[1]}/api/v1/statistics", headers={"X-API-Key": f"guess{i}"})
    try:
        code = urllib.request.urlopen(req, timeout=3).status
    except urllib.error.HTTPError as e:
        code = e.code
    codes[code] = codes.get(code, 0) + 1
if codes.get(429, 0) < 15:
    fail(f"admin key guessing not limited: {codes}")
print(f"   statuses: {codes}", flush=True)
healthy("at the end")
print("abuse.py: all attacks handled", flush=True)
