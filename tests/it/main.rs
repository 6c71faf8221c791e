//! Integration tests: one binary, so that shared harnesses start once.
//!
//! Everything runs for real: the emulator over HTTP on port 0, the client against it, the built
//! binary as a process. Nothing is mocked.

mod actions;
mod architecture;
mod bad_input;
mod broadcasts_api;
mod broker;
mod cli;
mod conformance;
mod crash;
mod daemon;
mod daemon_start;
mod dashboard;
mod dead_letters;
mod disk_full;
mod docs;
mod emulator;
mod encoders;
mod engine;
mod faults;
mod fixtures;
mod helpers;
mod history;
mod ingress;
mod keydelivery;
mod lifecycle;
mod operations;
mod property;
mod protection;
mod rabbit;
mod schedule;
mod schedule_changes;
mod slow_clients;
mod store_model;
mod systemd;
mod trace;
