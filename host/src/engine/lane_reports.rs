//! What the engine does with what a consumer thread hands over from the
//! lane besides answers: a delivery it must settle itself (one that fails
//! fedora-messaging's checks, or meets the delivery limit), and the end of
//! a queue's stream, which says whether the channels or the connection
//! are gone, or the queue.

use super::consuming::Channels;
use super::deadline::{SETUP_STEP, bounded_for};
use super::held::{Hold, dead_letter_wait};
use super::limit::{self, Verdict};
use super::message::{Diverted, Finished, Job, Why};
use super::redelivery::{self, Carried};
use super::session::{self, StreamEnd};
use super::waiting::Core;
use super::{ChannelsEnd, taken};
use crate::wire;

impl Core {
    /// What a consumer thread handed over from the lane besides answers:
    /// a delivery for the engine to settle, or the end of a stream. `Err`
    /// when the connection's channels must end.
    pub(super) async fn lane_report(
        &mut self,
        channels: &mut Channels<'_>,
        finished: Finished,
    ) -> Result<(), ChannelsEnd> {
        match finished {
            Finished::Diverted(diverted) => self.settle_diverted(channels, *diverted, None).await,
            Finished::Ended(channel, _) if !channels.ledger.owns_channel(&channel) => Ok(()),
            Finished::Ended(channel, Some(error)) => {
                let source = channel.source();
                let reason = format!(
                    "consuming from {:?} failed: {error}",
                    channels.ledger.names()[source]
                );
                if !channels.connection.status().connected() {
                    return Err(ChannelsEnd::ConnectionLost(reason));
                }
                self.channel_failed(channels, source, reason).await;
                Ok(())
            }
            Finished::Ended(channel, None) => {
                if !self.lifecycle.is_running() {
                    // Our own cancel ends the streams; what is in flight
                    // is still settled on the channels.
                    return Ok(());
                }
                let source = channel.source();
                let queue = channels.ledger.queue(source);
                let why = self
                    .pulse
                    .beating(session::why_ended(channels.connection, &queue))
                    .await;
                match why {
                    StreamEnd::ConnectionLost(reason) => Err(ChannelsEnd::ConnectionLost(reason)),
                    StreamEnd::Reopen(reason) => {
                        self.channel_failed(channels, source, reason).await;
                        Ok(())
                    }
                    StreamEnd::QueueGone => {
                        if self.lifecycle.queue_gone() {
                            self.start_draining(Some(&channels.ledger)).await;
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
    /// channel is gone (its count remembered). A redelivery first waits
    /// out its retry delay, held; so does a dead letter not taken
    /// ([`super::held`]); `released` says which hold it comes from. Its
    /// in-flight token goes when this returns, or with the job it becomes.
    pub(super) async fn settle_diverted(
        &mut self,
        channels: &mut Channels<'_>,
        diverted: Diverted,
        released: Option<Hold>,
    ) -> Result<(), ChannelsEnd> {
        let ledger = &mut channels.ledger;
        if !ledger.owns(&diverted.ticket) {
            if let (Some(policy), Why::Limited { verdict, .. }) = (&self.limit, &diverted.why) {
                let queue = &ledger.names()[diverted.ticket.source()];
                policy.remember(queue, &diverted.delivery, verdict.made());
            }
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
                taken(settled.is_some())
            }
            Why::Limited { checked, verdict } => {
                let Some(limit) = self.limit.clone() else {
                    return Ok(());
                };
                let source = ticket.source();
                if let Verdict::CarryCount(made) = verdict
                    && released.is_none()
                    && self.lifecycle.is_running()
                {
                    let wait = limit.retry_wait(made);
                    if !wait.is_zero() {
                        log::debug!(
                            "message {} waits {wait:?} before its next attempt",
                            wire::message_id(&delivery.properties)
                        );
                        let why = Why::Limited { checked, verdict };
                        self.held
                            .hold(Hold::RetryWait, Some(wait), delivery, ticket, why);
                        return Ok(());
                    }
                }
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
                    Carried::Consume(_) | Carried::Kept(..) if !self.lifecycle.is_running() => {}
                    Carried::CameBack(delivery) => {
                        let why = Why::Limited { checked, verdict };
                        self.held.hold(Hold::CameBack, None, *delivery, ticket, why);
                        self.stats.set_dead_letters_kept(self.held.dead_letters());
                    }
                    Carried::Kept(delivery, untaken) => {
                        let id = wire::message_id(&delivery.properties).to_owned();
                        let tries = match released {
                            Some(Hold::DeadLetter { tries }) => tries.saturating_add(1),
                            _ => 1,
                        };
                        let wait = dead_letter_wait(tries);
                        let why = Why::Limited { checked, verdict };
                        let hold = Hold::DeadLetter { tries };
                        self.held.hold(hold, Some(wait), *delivery, ticket, why);
                        self.stats.set_dead_letters_kept(self.held.dead_letters());
                        let exchange = limit.dead_letter_exchange.as_deref().unwrap_or_default();
                        let (why, fix) = untaken.why_and_fix();
                        log::warn!(
                            "Dead-letter exchange {exchange:?} did not take message {id} ({why}, {}): it stays in queue {:?}, not consumed, and is sent there again in {} s; {fix}",
                            limit::times(tries),
                            ledger.names()[source],
                            wait.as_secs()
                        );
                    }
                    Carried::Consume(delivery) => {
                        self.stats.received();
                        self.pending.push_back(Job {
                            delivery: *delivery,
                            queue: ledger.names()[source].clone(),
                            checked,
                            ticket,
                            in_flight,
                        });
                    }
                    Carried::Settled => ledger.settled_elsewhere(&ticket),
                    Carried::PublisherFailed(reason) => {
                        ledger.settled_elsewhere(&ticket);
                        log::warn!(
                            "{reason}; the message goes back to its queue, and the copies go out on a new channel"
                        );
                        let opening = bounded_for(
                            "opening a channel for [delivery_limit]",
                            SETUP_STEP,
                            session::open_publisher(channels.publishing, &limit),
                        );
                        match self.pulse.beating(opening).await {
                            Some(Ok(publisher)) => channels.ledger.replace_publisher(publisher),
                            Some(Err(fatal)) => {
                                return Err(ChannelsEnd::ConnectionLost(fatal.message));
                            }
                            None => {
                                return Err(ChannelsEnd::ConnectionLost(
                                    "the broker did not open a channel for [delivery_limit]"
                                        .to_owned(),
                                ));
                            }
                        }
                    }
                }
                Ok(())
            }
        }
    }
}
