//! The kernel's process event connector (netlink `NETLINK_CONNECTOR`, `CN_IDX_PROC`), through the
//! `proc-connector` crate, reduced to the events discovery acts on.
use std::os::fd::AsFd;
use std::time::Duration;

use proc_connector::{ProcConnector, ProcEvent};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    Fork {
        parent: u32,
        child: u32,
    },
    Exec(u32),
    Exit(u32),
    /// comm or uid changed: a retitled or privilege-dropping process.
    Refresh(u32),
    /// Something the kernel sent that discovery ignores (thread events and the like).
    Ignored,
}

pub(crate) enum Recv {
    Event(Event),
    Timeout,
    /// The kernel dropped events: only a rescan can tell what was missed.
    Overrun,
}

pub(crate) struct Connector {
    conn: ProcConnector,
    buf: Vec<u8>,
}

impl Connector {
    /// Subscribes. Fails without `CAP_NET_ADMIN`, outside the initial network namespace, or on a
    /// kernel without `CONFIG_PROC_EVENTS`.
    pub fn open(recv_buffer: usize) -> Result<Connector, proc_connector::Error> {
        let conn = ProcConnector::new()?;
        // Unfiltered: with a kernel-side event filter the subscription's acknowledgement
        // (PROC_EVENT_NONE) is filtered out too, and the crate's blocking wait for it then lasts
        // until the next fork or exec anywhere on the host (30 s+ on a quiet one).
        conn.subscribe()?;
        // Root may exceed `rmem_max`.
        if nix::sys::socket::setsockopt(
            &conn.as_fd(),
            nix::sys::socket::sockopt::RcvBufForce,
            &recv_buffer,
        )
        .is_err()
        {
            let _ = conn.set_recv_buf_size(recv_buffer);
        }
        Ok(Connector {
            conn,
            buf: vec![0u8; 8192],
        })
    }

    pub fn recv(&mut self, timeout: Duration) -> Result<Recv, proc_connector::Error> {
        match self.conn.recv_timeout(&mut self.buf, timeout) {
            Ok(Some(ev)) => Ok(Recv::Event(reduce(&ev))),
            Ok(None) | Err(proc_connector::Error::Interrupted) => Ok(Recv::Timeout),
            Err(proc_connector::Error::Overrun) => Ok(Recv::Overrun),
            // A message the crate could not parse is one lost event, not a broken socket.
            Err(proc_connector::Error::Truncated | proc_connector::Error::UnexpectedConnector) => {
                Ok(Recv::Overrun)
            }
            Err(e) => Err(e),
        }
    }
}

/// Processes only: a thread's fork or exit has `pid != tgid`.
fn reduce(ev: &ProcEvent) -> Event {
    match *ev {
        ProcEvent::Fork {
            parent_tgid,
            child_pid,
            child_tgid,
            ..
        } if child_pid == child_tgid => Event::Fork {
            parent: parent_tgid,
            child: child_tgid,
        },
        ProcEvent::Exec { tgid, .. } => Event::Exec(tgid),
        ProcEvent::Exit { pid, tgid, .. } if pid == tgid => Event::Exit(tgid),
        ProcEvent::Comm { pid, tgid, .. } if pid == tgid => Event::Refresh(tgid),
        ProcEvent::Uid { tgid, .. } => Event::Refresh(tgid),
        _ => Event::Ignored,
    }
}
