//! The activation window: a node holding a verified payload installs it only inside the rollout's
//! daily window (UTC), and waits (still serving its peers) outside it.
//!
//! The window comes as a `watch` so that a change to the rollout applies while the node waits: a
//! window removed or moved to include now ends the wait at once. The arithmetic lives on
//! [`ActivationWindow`] (pure); this module reads the wall clock and sleeps.
//!
//! Non-goals: time zones other than UTC, and clock sources other than the system clock (the node
//! trusts its own clock, as it does for certificate validity).

use std::time::{Duration, SystemTime};

use pollen_crds::rollout::ActivationWindow;
use tokio::sync::watch;
use tracing::info;

/// The longest single sleep: the clock is read again at least this often, so a clock step (NTP
/// after boot, a device without a battery-backed clock) delays activation by at most this much.
const RECHECK: Duration = Duration::from_secs(60);

/// Seconds past midnight (UTC) by the system clock.
fn seconds_of_day() -> u32 {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    (since % 86_400) as u32
}

/// How long the node must wait now before it may activate (`ZERO` without a window or inside it).
pub fn wait_now(window: Option<&ActivationWindow>) -> Result<Duration, String> {
    match window {
        None => Ok(Duration::ZERO),
        Some(w) => w.wait_at(seconds_of_day()).map(|s| Duration::from_secs(s.into())),
    }
}

/// Waits until the window (as it is now, or as it changes) includes the present. Returns at once
/// without a window; an error names a malformed window. A closed channel keeps its last window.
pub async fn wait_open(mut window: watch::Receiver<Option<ActivationWindow>>) -> Result<(), String> {
    let mut follow = true;
    let mut logged = false;
    loop {
        let current = window.borrow_and_update().clone();
        let wait = wait_now(current.as_ref())?;
        if wait.is_zero() {
            if logged {
                info!("activation window open");
            }
            return Ok(());
        }
        if !logged {
            let w = current.as_ref().expect("a wait needs a window");
            info!(start = %w.start, end = %w.end, wait_s = wait.as_secs(), "staged: waiting for the activation window");
            logged = true;
        }
        let nap = tokio::time::sleep(wait.min(RECHECK));
        if follow {
            tokio::select! {
                _ = nap => {}
                r = window.changed() => follow = r.is_ok(),
            }
        } else {
            nap.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window that is closed now: it opens `hours` from now and lasts an hour.
    fn closed(hours: u32) -> ActivationWindow {
        let start = (seconds_of_day() / 60 + hours * 60) % 1440;
        let end = (start + 60) % 1440;
        let hm = |m: u32| format!("{:02}:{:02}", m / 60, m % 60);
        ActivationWindow {
            start: hm(start),
            end: hm(end),
        }
    }

    #[test]
    fn no_window_means_no_wait() {
        assert_eq!(wait_now(None), Ok(Duration::ZERO));
        let w = closed(3);
        let wait = wait_now(Some(&w)).unwrap();
        assert!(
            wait > Duration::from_secs(2 * 3600) && wait <= Duration::from_secs(3 * 3600),
            "{wait:?}"
        );
    }

    #[tokio::test]
    async fn a_closed_window_holds_until_it_is_lifted() {
        let (tx, rx) = watch::channel(Some(closed(3)));
        let mut waiting = tokio::spawn(wait_open(rx));
        tokio::select! {
            _ = &mut waiting => panic!("installed outside the window"),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        tx.send_replace(None);
        let r = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert_eq!(
            r.expect("the wait ends when the window is lifted").unwrap(),
            Ok(())
        );
    }

    #[tokio::test]
    async fn a_window_moved_to_include_now_opens_at_once() {
        let (tx, rx) = watch::channel(Some(closed(5)));
        let waiting = tokio::spawn(wait_open(rx));
        // Opened an hour ago, for two hours: includes now.
        let open = closed(23);
        let open = ActivationWindow {
            end: closed(1).end,
            ..open
        };
        tx.send_replace(Some(open));
        let r = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert_eq!(r.expect("a window that includes now opens").unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn a_malformed_window_is_an_error_not_an_install() {
        let (_tx, rx) = watch::channel(Some(ActivationWindow {
            start: "25:00".into(),
            end: "01:00".into(),
        }));
        let e = wait_open(rx).await.unwrap_err();
        assert!(e.contains("25:00"), "{e}");
    }
}
