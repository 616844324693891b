//! What the engine does with what a consumer thread hands over from the
//! lane besides answers: a delivery it must settle itself (one that fails
//! fedora-messaging's checks, or meets the delivery limit), and the end of
//! a queue's stream, which says whether the channels or the connection
//! are gone, or the queue.

use lapin::Connection;

use super::lane::Diverted;
use super::ledger::{Ledger, Ticket};
use super::session::{self, StreamEnd};
use super::workers::{Finished, Job};
use super::{ChannelsEnd, Core, redelivery, taken};
use crate::wire;

impl Core {
    /// What a consumer thread handed over from the lane besides answers:
    /// a delivery for the engine to settle, or the end of a stream. `Err`
    /// when the channels must end.
    pub(super) async fn lane_report(
        &mut self,
        connection: &Connection,
        ledger: &mut Ledger,
        finished: Finished,
    ) -> Result<(), ChannelsEnd> {
        match finished {
            Finished::Diverted(diverted) => self.settle_diverted(ledger, *diverted).await,
            Finished::Ended(ticket, _) if !ledger.owns(&ticket) => Ok(()),
            Finished::Ended(ticket, Some(error)) => {
                let reason = format!(
                    "consuming from {:?} failed: {error}",
                    ledger.queues()[ticket.source()].queue
                );
                Err(if connection.status().connected() {
                    ChannelsEnd::Reopen(reason)
                } else {
                    ChannelsEnd::ConnectionLost(reason)
                })
            }
            Finished::Ended(ticket, None) => {
                if !self.lifecycle.is_running() {
                    // Our own cancel ends the streams; what is in flight
                    // is still settled on the channels.
                    return Ok(());
                }
                match session::why_ended(connection, &ledger.queues()[ticket.source()]).await {
                    StreamEnd::ConnectionLost(reason) => Err(ChannelsEnd::ConnectionLost(reason)),
                    StreamEnd::Reopen(reason) => Err(ChannelsEnd::Reopen(reason)),
                    StreamEnd::QueueGone => {
                        if self.lifecycle.queue_gone() {
                            self.start_draining(Some(ledger)).await;
                        }
                        Ok(())
                    }
                }
            }
            // answer() took the others.
            Finished::Done(..)
            | Finished::Unstarted(_)
            | Finished::BuildFailed(_)
            | Finished::Idle => Ok(()),
        }
    }

    /// A delivery a consumer thread did not hand to its consumer: one
    /// fedora-messaging would refuse is rejected without requeue; one the
    /// delivery limit stops is carried on or dead-lettered, and given to a
    /// worker only if that cannot be done (and the process is not
    /// draining). Left unsettled (the broker delivers it again) once its
    /// channels are gone.
    async fn settle_diverted(
        &mut self,
        ledger: &mut Ledger,
        diverted: Diverted,
    ) -> Result<(), ChannelsEnd> {
        let ticket: &Ticket = match &diverted {
            Diverted::Refused { ticket, .. } | Diverted::Limited { ticket, .. } => ticket,
        };
        if !ledger.owns(ticket) {
            return Ok(());
        }
        match diverted {
            Diverted::Refused {
                delivery,
                ticket,
                reason,
            } => {
                log::warn!(
                    "Message id {} did not pass validation; ignoring message: {reason}",
                    wire::message_id(&delivery.properties)
                );
                let tag = delivery.delivery_tag;
                let settled = ledger.reject(delivery).await;
                ledger.settled_elsewhere(&ticket, tag);
                taken(settled)
            }
            Diverted::Limited {
                delivery,
                ticket,
                checked,
                verdict,
            } => {
                let Some(limit) = self.limit.clone() else {
                    return Ok(());
                };
                let tag = delivery.delivery_tag;
                let source = ticket.source();
                let carried =
                    redelivery::carry_out(ledger, source, delivery, verdict, &limit, &self.stats)
                        .await?;
                match carried {
                    // Unsettled: the broker delivers it again.
                    Some(_) if !self.lifecycle.is_running() => {}
                    Some(delivery) => {
                        self.stats.received();
                        self.pending.push_back(Job {
                            delivery,
                            queue: ledger.queues()[source].queue.clone(),
                            checked,
                            ticket,
                            from_engine: true,
                        });
                    }
                    None => ledger.settled_elsewhere(&ticket, tag),
                }
                Ok(())
            }
        }
    }
}
