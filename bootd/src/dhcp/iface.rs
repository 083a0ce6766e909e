//! The server's address and netmask on the DHCP interface, from the kernel.

use std::ffi::CStr;
use std::net::Ipv4Addr;

/// An interface's IPv4 address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub ip: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub name: String,
}

/// IPv4 address and netmask of the interface named `name`, or of the
/// interface holding `addr`; the first match.
pub fn find(name: Option<&str>, addr: Option<Ipv4Addr>) -> std::io::Result<Option<Found>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_netmask.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: non-null pointers into the same list.
        let (family, ifname) = unsafe {
            (
                i32::from((*ifa.ifa_addr).sa_family),
                CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned(),
            )
        };
        if family != libc::AF_INET {
            continue;
        }
        // SAFETY: AF_INET entries hold sockaddr_in for address and mask.
        let (ip, mask) = unsafe {
            let a = &*(ifa.ifa_addr as *const libc::sockaddr_in);
            let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
            (
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                Ipv4Addr::from(u32::from_be(m.sin_addr.s_addr)),
            )
        };
        if name.is_none_or(|n| n == ifname) && addr.is_none_or(|a| a == ip) {
            found = Some(Found {
                ip,
                netmask: mask,
                name: ifname,
            });
            break;
        }
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(found)
}
