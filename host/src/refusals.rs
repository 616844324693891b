//! When refusals end the attempts to connect. Each node of `amqp_urls`
//! carries its own credentials, and one node's vhost can be down or its
//! connection limit reached while the others accept: so a node's refusal
//! moves on to the next node, and only a full round of refusals (every
//! node, one after another) is final. A node that cannot be reached, or a
//! connection made, breaks the round: the next refusal starts a new one.

/// The refusals of the current round, one line each (which node, and its
/// reason).
#[derive(Debug)]
pub struct RefusalRound {
    nodes: usize,
    refusals: Vec<String>,
}

impl RefusalRound {
    /// A round over `nodes` nodes (at least one).
    pub fn new(nodes: usize) -> RefusalRound {
        RefusalRound {
            nodes: nodes.max(1),
            refusals: Vec::new(),
        }
    }

    /// The current node refused, as `line` says. `Err` with the line to
    /// end on once every node has refused in a row: each node's reason,
    /// in the order they were tried.
    pub fn refused(&mut self, line: String) -> Result<(), String> {
        self.refusals.push(line);
        if self.refusals.len() < self.nodes {
            return Ok(());
        }
        let refusals = std::mem::take(&mut self.refusals);
        if self.nodes == 1 {
            return Err(refusals.concat());
        }
        Err(format!(
            "every node of amqp_urls refused: {}",
            refusals.join("; ")
        ))
    }

    /// A node could not be reached, or a connection was made: the round
    /// starts again.
    pub fn broken(&mut self) {
        self.refusals.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_node_ends_on_its_first_refusal_with_its_own_line() {
        let mut round = RefusalRound::new(1);
        assert_eq!(
            round.refused("the broker at a refused the connection: 403".into()),
            Err("the broker at a refused the connection: 403".into())
        );
    }

    #[test]
    fn several_nodes_end_when_each_has_refused_naming_every_reason() {
        let mut round = RefusalRound::new(3);
        assert_eq!(round.refused("a: 403".into()), Ok(()));
        assert_eq!(round.refused("b: 530".into()), Ok(()));
        assert_eq!(
            round.refused("c: 403".into()),
            Err("every node of amqp_urls refused: a: 403; b: 530; c: 403".into())
        );
    }

    #[test]
    fn an_unreachable_node_or_a_connection_starts_the_round_again() {
        let mut round = RefusalRound::new(2);
        assert_eq!(round.refused("a: 403".into()), Ok(()));
        round.broken();
        assert_eq!(round.refused("a: 403".into()), Ok(()));
        assert!(round.refused("b: 530".into()).is_err());
        // A round that ended leaves nothing behind for the next.
        assert_eq!(round.refused("a: 403".into()), Ok(()));
    }
}
