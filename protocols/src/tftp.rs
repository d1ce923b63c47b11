//! tftp server (work in progress).
