//! What the engine does with what a consumer thread hands over from the
//! lane besides answers: a delivery it must settle itself (one that fails
//! fedora-messaging's checks, or meets the delivery limit), and the end of
//! a queue's stream, which says whether the channels or the connection
//! are gone, or the queue.

use lapin::Connection;

use super::message::{Diverted, Finished, Job, Why};
use super::redelivery;
use super::session::{self, StreamEnd};
use super::settler::Ledger;
use super::{ChannelsEnd, Core, taken};
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
            Finished::Ended(channel, _) if !ledger.owns_channel(&channel) => Ok(()),
            Finished::Ended(channel, Some(error)) => {
                let reason = format!(
                    "consuming from {:?} failed: {error}",
                    ledger.queues()[channel.source()].queue
                );
                Err(if connection.status().connected() {
                    ChannelsEnd::Reopen(reason)
                } else {
                    ChannelsEnd::ConnectionLost(reason)
                })
            }
            Finished::Ended(channel, None) => {
                if !self.lifecycle.is_running() {
                    // Our own cancel ends the streams; what is in flight
                    // is still settled on the channels.
                    return Ok(());
                }
                match session::why_ended(connection, &ledger.queues()[channel.source()]).await {
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
            Finished::Done(..) | Finished::BuildFailed(_) => Ok(()),
        }
    }

    /// A delivery a consumer thread did not hand to its consumer: one
    /// fedora-messaging would refuse is rejected without requeue; one the
    /// delivery limit stops is carried on or dead-lettered, and given to a
    /// worker only if that cannot be done (and the process is not
    /// draining). Left unsettled (the broker delivers it again) once its
    /// channel is gone. Its in-flight token goes when this returns, or
    /// with the job it becomes.
    async fn settle_diverted(
        &mut self,
        ledger: &mut Ledger,
        diverted: Diverted,
    ) -> Result<(), ChannelsEnd> {
        if !ledger.owns(&diverted.ticket) {
            return Ok(());
        }
        let Diverted {
            delivery,
            ticket,
            in_flight,
            why,
        } = diverted;
        match why {
            Why::Refused(reason) => {
                log::warn!(
                    "Message id {} did not pass validation; ignoring message: {reason}",
                    wire::message_id(&delivery.properties)
                );
                let settled = self.pulse.beating(ledger.reject(delivery)).await;
                ledger.settled_elsewhere(&ticket);
                taken(settled)
            }
            Why::Limited { checked, verdict } => {
                let Some(limit) = self.limit.clone() else {
                    return Ok(());
                };
                let source = ticket.source();
                let carried = self
                    .pulse
                    .beating(redelivery::carry_out(
                        ledger,
                        source,
                        delivery,
                        verdict,
                        &limit,
                        &self.stats,
                    ))
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
                            in_flight,
                        });
                    }
                    None => ledger.settled_elsewhere(&ticket),
                }
                Ok(())
            }
        }
    }
}
