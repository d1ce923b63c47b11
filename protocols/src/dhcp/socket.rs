//! The server's UDP socket and the kernel plumbing around it: binding to one interface
//! (SO_BINDTODEVICE), finding an interface's address (`server_ip` when the config names
//! only an interface), and teaching the kernel a client's MAC so an OFFER/ACK can be
//! unicast to an address the client does not have yet (RFC 2131 §4.1).
//!
//! The ARP entry is written with the SIOCSARP ioctl, as dnsmasq and dora do; no crate
//! wraps it, so it is the one `unsafe` block of the DHCP server. It needs CAP_NET_ADMIN;
//! without it replies fall back to broadcast, which every client accepts.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use provbox_config::{Ipv4Net, MacAddr};
use socket2::{Domain, Protocol, Socket, Type};

/// Large buffers: a burst of thousands of DISCOVERs must queue, not drop.
const RECV_BUFFER: usize = 8 << 20;
const SEND_BUFFER: usize = 4 << 20;

/// Creates the non-blocking server socket.
pub fn bind(addr: SocketAddr, interface: Option<&str>) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    if let Some(name) = interface {
        s.bind_device(Some(name.as_bytes()))?;
    }
    // Best effort: the kernel caps these at net.core.[rw]mem_max without privileges.
    if s.set_recv_buffer_size(RECV_BUFFER).is_err() {
        let _ = s.set_recv_buffer_size(RECV_BUFFER / 8);
    }
    let _ = s.set_send_buffer_size(SEND_BUFFER);
    s.bind(&addr.into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// The IPv4 interfaces: (name, address, network).
pub fn interfaces() -> Vec<(String, Ipv4Addr, Option<Ipv4Net>)> {
    let Ok(list) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    list.filter_map(|i| {
        let ip = i.address.as_ref()?.as_sockaddr_in()?.ip();
        let net = i
            .netmask
            .as_ref()
            .and_then(|m| m.as_sockaddr_in())
            .and_then(|m| Ipv4Net::from_mask(ip, m.ip()));
        Some((i.interface_name, ip, net))
    })
    .collect()
}

/// The first IPv4 address of `name`, with its network.
pub fn interface_ipv4(name: &str) -> Option<(Ipv4Addr, Option<Ipv4Net>)> {
    interfaces()
        .into_iter()
        .find(|(n, ..)| n == name)
        .map(|(_, ip, net)| (ip, net))
}

/// The interface whose network contains `ip` (where ARP entries for it belong).
pub fn interface_for(ip: Ipv4Addr) -> Option<String> {
    interfaces()
        .into_iter()
        .find(|(_, _, net)| net.is_some_and(|n| n.contains(ip)))
        .map(|(n, ..)| n)
}

/// Adds (or replaces) the ARP entry `ip → mac` on `interface`, so a unicast to `ip`
/// needs no ARP exchange with a client that has no address yet.
#[allow(unsafe_code)]
pub fn arp_inject(sock: &UdpSocket, interface: &str, ip: Ipv4Addr, mac: MacAddr) -> io::Result<()> {
    if interface.len() >= 16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    // SAFETY: `arpreq` is plain old data; all-zero is a valid value for every field.
    let mut req: libc::arpreq = unsafe { std::mem::zeroed() };
    let pa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in (16 bytes) fits in sockaddr (16 bytes); both are plain data.
    req.arp_pa = unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(pa) };
    req.arp_ha.sa_family = libc::ARPHRD_ETHER;
    for (d, s) in req.arp_ha.sa_data.iter_mut().zip(mac.0) {
        *d = s as libc::c_char;
    }
    // ATF_COM (linux/if_arp.h): the entry is complete; not exported by the libc crate.
    req.arp_flags = 0x02;
    for (d, s) in req.arp_dev.iter_mut().zip(interface.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: a valid socket fd and a pointer to an initialised arpreq that outlives the call.
    let rc = unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCSARP,
            &req as *const libc::arpreq,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
