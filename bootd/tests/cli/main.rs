//! bootd's operator commands end to end: the real binary, a temporary data
//! directory, and qemu-img / qemu-io / iscsi-ls as clients. One test binary.

mod api;
mod api_events;
mod api_openapi;
mod api_routes;
mod boot_http;
mod boot_stages;
mod common;
mod dashboard;
mod dhcp_leases;
mod images;
mod nocloud;
mod nodes;
mod postgres;
mod pr_client;
mod registry_restart;
mod reservations;
mod security;
mod serve;
mod servers;
mod takeover;
mod takeover_death;
mod takeover_vrrp;
mod tftp;
mod user_data;
