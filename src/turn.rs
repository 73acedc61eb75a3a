//! One clock read per turn of a connection's task.
//!
//! A relay connection's task works through a read's worth of frames — often
//! a dozen calls' beginnings and ends — in one synchronous stretch, and each
//! call wants the time several times: when it arrived, for its deadline, for
//! its round trip, its outcome, its metrics and its access log line. Reading
//! the clock for each costs more than the table lookups around it, so, as
//! HAProxy and Envoy do once per event-loop iteration, the time is read once
//! per turn — the first time something in it asks — and everything later in
//! the turn gets that time. Outside a turn, [`now`] reads the clock as usual.
//! Times inside a turn are late by at most the turn's own length
//! (microseconds), which no timer, deadline or latency figure here resolves.
//!
//! The time is tokio's, so tests with paused time drive it too.

use std::cell::Cell;
use std::marker::PhantomData;
use std::time::SystemTime;

use tokio::time::Instant;

/// A turn's times: none until first asked for.
#[derive(Clone, Copy)]
struct Times {
    now: Option<Instant>,
    wall: Option<SystemTime>,
}

thread_local! {
    /// The running turn's times; `None` when no turn runs on this thread.
    static TURN: Cell<Option<Times>> = const { Cell::new(None) };
}

/// The current time: the running turn's, else read now.
pub(crate) fn now() -> Instant {
    match TURN.get() {
        Some(Times { now: Some(now), .. }) => now,
        Some(times) => {
            let now = Instant::now();
            TURN.set(Some(Times {
                now: Some(now),
                ..times
            }));
            now
        }
        None => Instant::now(),
    }
}

/// The wall-clock time: the running turn's, else read now.
pub(crate) fn wall_now() -> SystemTime {
    match TURN.get() {
        Some(Times { wall: Some(wall), .. }) => wall,
        Some(times) => {
            let wall = SystemTime::now();
            TURN.set(Some(Times {
                wall: Some(wall),
                ..times
            }));
            wall
        }
        None => SystemTime::now(),
    }
}

/// A running turn: from [`Turn::start`] until it is dropped, [`now`] and
/// [`wall_now`] read the clock once and then give that time. It cannot be
/// held across an `.await` in a spawned task (it is not `Send`), so a turn
/// never outlives one poll.
pub(crate) struct Turn {
    outer: Option<Times>,
    _this_thread: PhantomData<*const ()>,
}

impl Turn {
    pub(crate) fn start() -> Self {
        let outer = TURN.replace(Some(Times { now: None, wall: None }));
        Self {
            outer,
            _this_thread: PhantomData,
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        TURN.set(self.outer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn inside_a_turn_the_time_stands_still_and_outside_it_moves_on() {
        let before = now();
        let turn = Turn::start();
        tokio::time::advance(std::time::Duration::from_millis(5)).await;
        let started = now();
        assert_eq!(
            started - before,
            std::time::Duration::from_millis(5),
            "read when first asked"
        );
        tokio::time::advance(std::time::Duration::from_millis(5)).await;
        assert_eq!(now(), started, "then the turn keeps that time");
        let wall = wall_now();
        assert_eq!(wall_now(), wall, "the wall clock is read once per turn");
        drop(turn);
        assert_eq!(
            now() - started,
            std::time::Duration::from_millis(5),
            "after the turn, the clock is read again"
        );
    }

    #[test]
    fn a_nested_turn_gives_the_outer_one_back() {
        let outer = Turn::start();
        let outer_now = now();
        {
            let _inner = Turn::start();
            assert!(now() >= outer_now);
        }
        assert_eq!(now(), outer_now);
        drop(outer);
        assert!(TURN.get().is_none());
    }
}
