//! provbox storage: everything that persists.
//!
//! - [`store`]: the watched file store, its index and immutable snapshots;
//! - [`resolve`]: the one safe path resolver every protocol goes through;
//! - [`names`]: what file names say (kind, model, version, MAC spellings);
//! - [`tls`]: the configured or generated TLS certificate;
//! - [`leases`]: the DHCP lease database;
//! - [`journal`]: the append-only event journal;
//! - [`mapped`]: memory-mapped blobs, and zero-copy sends from them.
//!
//! Architecture invariant: only this crate touches the store directory and the state
//! directory's files; protocols read through [`Store`] and [`Snapshot`].

pub mod journal;
pub mod leases;
pub mod mapped;
pub mod names;
pub mod resolve;
pub mod store;
pub mod tls;

pub use names::FileKind;
pub use store::{DirItem, Entry, Index, Snapshot, Store, StoreError, StoreEvent, StoreOptions};
