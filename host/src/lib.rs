//! The `fedora-messaging` host: loads consumers from plugin libraries and
//! runs them the way fedora-messaging runs Python callbacks.
//!
//! One message's path through the modules: [`config`] and [`cli`] decide
//! what to run; [`plugin`] loads the consumer (from a file
//! [`plugin_file`] checked; [`plugin_error`] says why it could not); [`broker`] connects
//! ([`amqp_url`] reads the URL as pika does) and [`topology`] declares the
//! queues and bindings; [`consume`] builds the [`engine`], which receives
//! deliveries, has [`wire`] check them and make each a
//! [`wire::MessageView`], runs the consumer on its own thread, and settles;
//! the consumer's [`outcome::Outcome`] goes through the one table that
//! gives the settlement and what happens next; [`exit`]
//! holds the exit codes and [`stop`] the signals. [`record`] is `consume`
//! with a built-in consumer that writes messages to a file, which
//! [`publish`] sends back; [`reconsume`] runs a consumer on recorded
//! messages instead of a broker.

pub mod amqp_url;
pub mod broker;
pub mod broker_rules;
pub mod check;
pub mod cli;
pub mod config;
pub mod consume;
pub mod engine;
pub mod exit;
pub mod in_progress;
pub mod logging;
pub mod monitor;
pub mod new_plugin;
pub mod notify;
pub mod outcome;
pub mod plugin;
pub mod plugin_error;
pub mod plugin_file;
pub mod publish;
pub mod publisher;
pub mod reconsume;
pub mod record;
pub mod refusals;
pub mod stop;
pub mod tls;
pub mod topology;
pub mod traces;
pub mod untrusted;
pub mod wire;
