//! The DHCP lease database (redb). Filled in by the DHCP work.
