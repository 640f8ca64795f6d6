//! Reading and writing another process's memory with `process_vm_readv`/`process_vm_writev`:
//! no ptrace stop needed, and a vanished process is a clean error.
use std::io::{IoSlice, IoSliceMut};

use nix::sys::uio::{process_vm_readv, process_vm_writev, RemoteIoVec};
use nix::unistd::Pid;

/// Reads exactly `len` bytes at `addr`.
pub fn read(pid: u32, addr: u64, len: usize) -> nix::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let remote = [RemoteIoVec {
            base: (addr as usize) + done,
            len: len - done,
        }];
        let mut local = [IoSliceMut::new(&mut buf[done..])];
        let n = process_vm_readv(Pid::from_raw(pid as i32), &mut local, &remote)?;
        if n == 0 {
            return Err(nix::Error::EFAULT);
        }
        done += n;
    }
    Ok(buf)
}

/// Writes all of `data` at `addr` (the pages must be writable in the target).
pub fn write(pid: u32, addr: u64, data: &[u8]) -> nix::Result<()> {
    let mut done = 0;
    while done < data.len() {
        let remote = [RemoteIoVec {
            base: (addr as usize) + done,
            len: data.len() - done,
        }];
        let local = [IoSlice::new(&data[done..])];
        let n = process_vm_writev(Pid::from_raw(pid as i32), &local, &remote)?;
        if n == 0 {
            return Err(nix::Error::EFAULT);
        }
        done += n;
    }
    Ok(())
}

pub fn read_u64(pid: u32, addr: u64) -> nix::Result<u64> {
    let b = read(pid, addr, 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(&b);
    Ok(u64::from_le_bytes(a))
}
