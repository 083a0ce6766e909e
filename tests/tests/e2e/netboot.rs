//! Network boot on a wire (issue 4): `bootd serve` with DHCP, TFTP and HTTP in a
//! namespace holding a bridge on 192.0.2.0/24, machines in namespaces of their own
//! plugged into it, busybox udhcpc, curl and a small DHCP client as their firmware.

mod bound;
mod full;
mod hostile;
mod lab;
mod proxy;
mod script;
mod unknown;
