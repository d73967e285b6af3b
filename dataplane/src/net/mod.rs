//! Network front ends: the glue between sockets and the sans-IO protocol sessions.

pub mod sv1;
