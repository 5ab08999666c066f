#!/usr/bin/env bash
# Seeds fuzz/corpus/<target> from the RFC 4475 torture messages and the SIP
# messages in the SIPp scenarios (their CDATA sections, with SIPp's [keywords]
# filled in), plus a few SDP, RTP and JSON samples. Idempotent.
set -euo pipefail
cd "$(dirname "$0")"
for t in sip_message sdp rtp sip_endpoint agent_json twilio_stream sip_multipart webhook_signature; do
  mkdir -p "corpus/$t"
done
cp ../tests/data/rfc4475/*.sip corpus/sip_message/
python3 - <<'PY'
import glob, os, re
subs = {"[service]": "precall", "[remote_ip]": "127.0.0.1", "[remote_port]": "5060", "[local_ip]": "127.0.0.1",
        "[local_port]": "5061", "[transport]": "UDP", "[call_id]": "seed@127.0.0.1", "[cseq]": "1",
        "[media_ip]": "127.0.0.1", "[media_port]": "6000", "[media_ip_type]": "4", "[pid]": "1", "[call_number]": "1",
        "[branch]": "z9hG4bK-seed", "[last_Via:]": "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-seed",
        "[last_From:]": "From: <sip:a@127.0.0.1>;tag=1", "[last_To:]": "To: <sip:b@127.0.0.1>;tag=2",
        "[last_Call-ID:]": "Call-ID: seed@127.0.0.1", "[last_CSeq:]": "CSeq: 1 INVITE", "[routes]": "", "[peer_tag_param]": ";tag=2"}
n = 0
for xml in sorted(glob.glob("../sipp-scenarios/*.xml")):
    for block in re.findall(r"<!\[CDATA\[(.*?)\]\]>", open(xml).read(), re.S):
        text = block.strip("\n")
        if not text or "SIP/2.0" not in text:
            continue
        lines = [l.strip() for l in text.splitlines()]
        msg = "\r\n".join(lines)
        for k, v in subs.items():
            msg = msg.replace(k, v)
        msg = re.sub(r"\[len\]", "0", msg)
        msg = re.sub(r"\[[a-z_:A-Z-]+\]", "x", msg)
        if "\r\n\r\n" not in msg:
            msg += "\r\n\r\n"
        name = f"sipp-{os.path.basename(xml)}-{n}.sip"
        open(f"corpus/sip_message/{name}", "w").write(msg)
        n += 1
        head, _, body = msg.partition("\r\n\r\n")
        if body.startswith("v=0"):
            open(f"corpus/sdp/{name}.sdp", "w").write(body)
print(f"seeded {n} SIPp messages")
PY
printf 'v=0\r\no=- 1 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n' > corpus/sdp/basic.sdp
printf '\x0c\x80\x00\x00\x01\x00\x00\x00\xa0\x00\x00\x00\x2a\x10\x80\x65\x00\x02\x00\x00\x00\x00\x00\x00\x2a\x01\x0a\x00\xa0' > corpus/rtp/two.bin
printf '{"type":"ping","ping_event":{"event_id":1,"ping_ms":5}}\n{"type":"audio","audio_event":{"audio_base_64":"AAAAAA==","event_id":2}}\n{"type":"interruption","interruption_event":{"event_id":2}}\n' > corpus/agent_json/seed.jsonl
printf '{"event":"media","media":{"payload":"/////w=="}}\n{"event":"dtmf","dtmf":{"digit":"5"}}\n{"event":"stop"}\n' > corpus/twilio_stream/seed.jsonl
