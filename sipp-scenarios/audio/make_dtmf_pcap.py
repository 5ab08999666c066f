#!/usr/bin/env python3
"""Writes an RFC 4733 telephone-event pcap for one keypad digit, in the form
SIPp's play_pcap_audio replays (Ethernet/IPv4/UDP, one packet per 20 ms):
six "key down" packets, then the end packet three times, as phones send it.

    python3 make_dtmf_pcap.py 9 dtmf_2833_9.pcap
"""
import struct
import sys

EVENTS = {str(d): d for d in range(10)} | {"*": 10, "#": 11}


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def packet(seq: int, ts: int, event: int, end: bool, duration: int) -> bytes:
    rtp = struct.pack("!BBHII", 0x80, 101 | (0x80 if seq == 0 else 0), seq, ts, 0x0DE1F0C5)
    rtp += struct.pack("!BBH", event, (0x80 if end else 0) | 10, duration)
    udp = struct.pack("!HHHH", 16000, 16000, 8 + len(rtp), 0) + rtp
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), seq, 0, 64, 17, 0, bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    eth = b"\0" * 12 + b"\x08\x00"
    return eth + ip + udp


def main() -> None:
    digit, out = sys.argv[1], sys.argv[2]
    event = EVENTS[digit]
    frames = [(i, False, 160 * (i + 1)) for i in range(6)] + [(6 + i, True, 160 * 7) for i in range(3)]
    with open(out, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i, end, duration in frames:
            data = packet(i, 8000, event, end, duration)
            usec = i * 20000
            f.write(struct.pack("<IIII", 1 + usec // 1000000, usec % 1000000, len(data), len(data)))
            f.write(data)


if __name__ == "__main__":
    main()
