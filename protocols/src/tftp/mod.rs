//! TFTP: a read-only server over the store (RFC 1350, 2347, 2348, 2349, 7440), a small
//! client, and the packet codec they share.

pub mod packet;
