//! File descriptors are shared by everything the daemon does: each call holds
//! an RTP socket (and an agent WebSocket), SIP over TCP holds a connection per
//! peer, and HTTP holds one per client. A flood of idle HTTP connections once
//! used them all, and new calls got `503 no free RTP port`. So the soft limit is
//! raised to the hard one at start, and HTTP gets only what is left after the
//! calls and SIP have their share.

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit now in force.
pub fn raise() -> u64 {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return 1024;
            }
            if lim.rlim_cur < lim.rlim_max {
                let wanted = libc::rlimit {
                    rlim_cur: lim.rlim_max,
                    rlim_max: lim.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                    lim.rlim_cur = lim.rlim_max;
                }
            }
        }
        #[allow(clippy::unnecessary_cast, reason = "rlim_t is not u64 on every unix")]
        let soft = lim.rlim_cur as u64;
        soft
    }
    #[cfg(not(unix))]
    {
        1024
    }
}

/// Descriptors the calls and SIP may need: two per call (RTP socket, agent
/// WebSocket), the SIP TCP table, and a margin for the database pool, logs and
/// the clone service's HTTP client.
pub fn reserved(max_calls: usize, max_sip_tcp: usize) -> u64 {
    (max_calls as u64)
        .saturating_mul(2)
        .saturating_add(max_sip_tcp as u64)
        .saturating_add(256)
}

/// How many HTTP connections fit beside the reserve (at least 16, so that
/// health checks still work on a tiny limit).
pub fn http_budget(configured: usize, limit: u64, reserve: u64) -> usize {
    let room = limit.saturating_sub(reserve).max(16);
    (configured as u64).min(room) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_gets_what_the_calls_leave() {
        let reserve = reserved(500, 1024);
        assert_eq!(reserve, 2280);
        assert_eq!(http_budget(512, 65_536, reserve), 512);
        assert_eq!(http_budget(512, 2500, reserve), 220);
        assert_eq!(http_budget(512, 1024, reserve), 16);
        assert!(raise() >= 16);
    }
}
