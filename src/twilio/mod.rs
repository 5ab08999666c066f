//! Twilio as a secondary ingress: request signatures, TwiML, and the Media
//! Streams WebSocket bridged to the same agent bridge as SIP calls.

pub mod signature;
