//! The `fedora-messaging` host: loads consumers from plugin libraries and
//! runs them the way fedora-messaging runs Python callbacks.
//!
//! One message's path through the modules: [`config`] and [`cli`] decide
//! what to run; [`plugin`] loads the consumer; [`wire`] turns input into a
//! [`wire::MessageView`]; the consumer answers with an [`outcome::Outcome`],
//! whose one table gives the settlement and what happens next; [`exit`]
//! holds the exit codes.

pub mod cli;
pub mod config;
pub mod exit;
pub mod logging;
pub mod outcome;
pub mod plugin;
pub mod reconsume;
pub mod wire;
