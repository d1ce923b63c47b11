//! dhcp server (work in progress).
