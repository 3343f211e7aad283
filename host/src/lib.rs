//! stasis-host: runs Asterisk ARI telephony apps as sandboxed WebAssembly components
//! across a cluster of Asterisk nodes, as if the cluster were one PBX.
//!
//! See ARCHITECTURE.md at the repository root for the map of the code.

pub mod admin;
pub mod admin_client;
pub mod amqp;
pub mod app_stream;
pub mod apps;
pub mod ari_client;
pub mod backend;
pub mod catalog;
pub mod cluster;
pub mod conference;
pub mod config;
pub mod demo;
pub mod dispatch;
pub mod event;
pub mod facade;
pub mod gateway;
pub mod ingress;
pub mod node_filter;
pub mod ownership;
pub mod recent;
pub mod replicas;
pub mod rest_socket;
pub mod router;
pub mod runtime;
pub mod store;
pub mod tls;
