//! Every simulator fault maps to the right error / push outcome, without panicking; retries
//! happen only for transport errors; a push is never silently resent once it may have arrived.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use v2sp_control::panel::{
    Action, Dialect, Fault as Whose, Fetch, NodeApi, Panel, PanelClient, PanelError, PushBody, PushOutcome,
    RetryPolicy,
};
use v2sp_testsupport::panel_sim::{user, Fault, PanelSim, SimOptions};

const U1: &str = "2b4f9e9c-1b5e-4d1c-9d6a-1f0c6b7a8e01";

fn sim() -> PanelSim {
    let sim = PanelSim::start(SimOptions::default()).unwrap();
    sim.set_node(26, json!({"node_type": "vless", "server_port": 443}));
    sim.set_users(26, vec![user(1, U1)]);
    sim
}

fn client(sim: &PanelSim, timeout: Duration) -> PanelClient {
    let mut a = NodeApi::new(sim.single_url(), sim.token(), 26);
    a.timeout = timeout;
    a.dialect = Dialect::Single;
    PanelClient::new(a).unwrap().with_retry(RetryPolicy {
        retries: 3,
        base: Duration::from_millis(2),
        cap: Duration::from_millis(10),
    })
}

fn body() -> PushBody {
    PushBody::from([(1, [1000, 2000]), (2, [5, 0])])
}

#[test]
fn status_faults_are_panel_errors_without_retry() {
    let sim = sim();
    let mut c = client(&sim, Duration::from_secs(2));
    for code in [400, 403, 404, 500, 502] {
        sim.clear_requests();
        sim.set_fault(Action::Config, Fault::Status(code));
        match c.config().unwrap_err() {
            e @ PanelError::Status { .. } => {
                assert_eq!(e.status(), Some(code));
                assert_eq!(e.fault(), Whose::Panel);
                assert!(e.to_string().contains("injected fault"), "{e}");
            }
            other => panic!("{code}: {other}"),
        }
        assert_eq!(sim.requests().len(), 1, "HTTP status errors are not retried");
    }
}

#[test]
fn html_and_garbage_are_decode_errors() {
    let sim = sim();
    let mut c = client(&sim, Duration::from_secs(2));
    for (action, fault) in [
        (Action::Config, Fault::Html),
        (Action::Config, Fault::Garbage),
        (Action::User, Fault::Html),
        (Action::User, Fault::Garbage),
    ] {
        sim.clear_faults();
        sim.set_fault(action, fault.clone());
        let r = if action == Action::Config {
            c.config().map(|_| ())
        } else {
            c.users().map(|_| ())
        };
        match r.unwrap_err() {
            PanelError::Decode { action: a, source } => {
                assert_eq!(a, action);
                assert_eq!(source.path, "$", "{source}");
            }
            other => panic!("{action} {fault:?}: {other}"),
        }
    }
    // After the faults clear, the real answer is Changed (the bad bodies were never cached).
    sim.clear_faults();
    assert!(matches!(c.config().unwrap(), Fetch::Changed { .. }));
    assert!(matches!(c.users().unwrap(), Fetch::Changed { .. }));
}

#[test]
fn transport_faults_are_retried_then_reported() {
    let sim = sim();
    let mut c = client(&sim, Duration::from_millis(300));
    for fault in [Fault::Reset, Fault::Slow(Duration::from_millis(600))] {
        sim.clear_requests();
        sim.set_fault(Action::User, fault.clone());
        match c.users().unwrap_err() {
            e @ PanelError::Transport { attempts, .. } => {
                assert_eq!(attempts, 4, "{fault:?}: 1 try + 3 retries");
                assert_eq!(e.fault(), Whose::Transport);
            }
            other => panic!("{fault:?}: {other}"),
        }
        sim.set_fault(Action::User, Fault::None);
        // Slow requests are still being served one at a time; wait for the simulator to
        // record all four before counting.
        let deadline = Instant::now() + Duration::from_secs(5);
        while sim.requests_for(Action::User).len() < 4 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(sim.requests_for(Action::User).len(), 4, "{fault:?}");
    }
}

#[test]
fn a_transient_transport_error_is_absorbed_by_retries() {
    let sim = sim();
    let mut c = client(&sim, Duration::from_secs(2));
    sim.set_fault_times(Action::Config, Fault::Reset, 2);
    assert!(matches!(c.config().unwrap(), Fetch::Changed { .. }));
    let statuses: Vec<Option<u16>> = sim
        .requests_for(Action::Config)
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, vec![None, None, Some(200)]);
}

#[test]
fn outage_is_a_transport_error_and_push_not_delivered() {
    let sim = sim();
    let mut c = client(&sim, Duration::from_millis(500));
    sim.set_fault(Action::Config, Fault::Outage);
    // Wait until the listener is really closed.
    std::thread::sleep(Duration::from_millis(50));
    let e = c.config().unwrap_err();
    assert!(matches!(e, PanelError::Transport { attempts: 4, .. }), "{e}");
    match c.push(&body(), "batch-1") {
        PushOutcome::NotDelivered { detail } => assert!(!detail.is_empty()),
        other => panic!("refused connections never reach the panel: {other:?}"),
    }
    assert!(c.alivelist_fail_open().is_empty());
    sim.set_fault(Action::Config, Fault::None);
    // The simulator re-binds the same port; the same client recovers.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut outcome = c.push(&body(), "batch-1");
    while outcome != PushOutcome::Accepted && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        outcome = c.push(&body(), "batch-1");
    }
    assert_eq!(outcome, PushOutcome::Accepted);
    assert_eq!(sim.totals(26), BTreeMap::from([(1, (1000, 2000)), (2, (5, 0))]));
}

#[test]
fn push_5xx_is_unknown_and_a_json_4xx_is_a_refusal() {
    let sim = sim();
    let mut c = client(&sim, Duration::from_secs(2));
    // A 500 may come after the panel recorded the push: not an acknowledgement.
    sim.set_fault(Action::Push, Fault::Status(500));
    assert!(matches!(c.push(&body(), "batch-1"), PushOutcome::Unknown { .. }));
    assert_eq!(
        sim.requests_for(Action::Push).len(),
        1,
        "not retried by the client"
    );
    assert!(sim.totals(26).is_empty());
    sim.set_fault(Action::Push, Fault::json_refusal(422, "node disabled"));
    assert_eq!(
        c.push(&body(), "batch-1"),
        PushOutcome::Refused {
            code: 422,
            message: "node disabled".into()
        }
    );
    // A 4xx that is not the panel's JSON (a proxy's page) proves nothing either.
    sim.set_fault(
        Action::Push,
        Fault::Answer {
            status: 403,
            content_type: "text/html",
            body: b"<html>Forbidden by proxy</html>".to_vec(),
            apply: false,
        },
    );
    assert!(matches!(c.push(&body(), "batch-1"), PushOutcome::Unknown { .. }));
}

#[test]
fn push_reset_after_sending_is_unknown_and_not_retried() {
    let sim = sim();
    let mut c = client(&sim, Duration::from_secs(2));
    sim.set_fault(Action::Push, Fault::Reset);
    assert!(matches!(c.push(&body(), "batch-1"), PushOutcome::Unknown { .. }));
    assert_eq!(
        sim.requests_for(Action::Push).len(),
        1,
        "a possibly delivered push is left to the caller"
    );
    assert!(sim.totals(26).is_empty());
}

#[test]
fn push_timeout_after_sending_is_unknown() {
    let sim = sim();
    let mut c = client(&sim, Duration::from_millis(200));
    sim.set_fault(Action::Push, Fault::Slow(Duration::from_millis(400)));
    assert!(matches!(c.push(&body(), "batch-1"), PushOutcome::Unknown { .. }));
    // The panel applies it after our timeout: exactly the case the report id exists for.
    sim.set_fault(Action::Push, Fault::None);
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.totals(26).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(c.push(&body(), "batch-1"), PushOutcome::Accepted);
    assert_eq!(
        sim.totals(26),
        BTreeMap::from([(1, (1000, 2000)), (2, (5, 0))]),
        "counted once"
    );
}

#[test]
fn lost_answer_then_retry_with_same_id_counts_once() {
    let sim = sim();
    let mut c = client(&sim, Duration::from_secs(2));
    sim.set_fault_times(Action::Push, Fault::AcceptThenDropReply, 1);
    assert!(matches!(c.push(&body(), "batch-7"), PushOutcome::Unknown { .. }));
    assert_eq!(
        sim.totals(26),
        BTreeMap::from([(1, (1000, 2000)), (2, (5, 0))]),
        "applied before the reply was lost"
    );
    assert_eq!(c.push(&body(), "batch-7"), PushOutcome::Accepted);
    assert_eq!(
        sim.totals(26),
        BTreeMap::from([(1, (1000, 2000)), (2, (5, 0))]),
        "not added twice"
    );
    let pushes = sim.pushes();
    assert_eq!(
        pushes.iter().map(|p| p.duplicate).collect::<Vec<_>>(),
        vec![false, true]
    );
    // A new batch id is new traffic.
    assert_eq!(
        c.push(&PushBody::from([(1, [1, 1])]), "batch-8"),
        PushOutcome::Accepted
    );
    assert_eq!(sim.totals(26)[&1], (1001, 2001));
}

#[test]
fn post_faults_on_alive() {
    let sim = sim();
    let mut c = client(&sim, Duration::from_secs(2));
    let alive = BTreeMap::from([(1, vec!["198.51.100.1".to_string()])]);
    sim.set_fault(Action::Alive, Fault::Status(403));
    assert_eq!(c.alive(&alive).unwrap_err().status(), Some(403));
    // An HTML page is not the panel's acknowledgement, even with status 200.
    sim.set_fault(Action::Alive, Fault::cdn_html_200());
    assert!(c.alive(&alive).is_err());
    sim.set_fault(Action::Alive, Fault::None);
    sim.set_fault_times(Action::Alive, Fault::Reset, 1);
    c.alive(&alive).unwrap();
    assert_eq!(sim.alive_reports(26).len(), 1);
}

#[test]
fn only_a_json_2xx_acknowledges_a_push() {
    // The acknowledgement rule: every answer but the panel's own JSON 2xx leaves the outcome
    // unknown, whatever the panel did with the request.
    let sim = sim();
    let mut c = client(&sim, Duration::from_secs(2));
    for fault in [
        Fault::cdn_html_200(),
        Fault::Html,
        Fault::Garbage,
        Fault::empty_200(true),
        Fault::empty_200(false),
        Fault::status_after_apply(500),
        Fault::status_after_apply(502),
        Fault::Answer {
            status: 302,
            content_type: "text/html",
            body: Vec::new(),
            apply: false,
        },
    ] {
        sim.set_fault(Action::Push, fault.clone());
        assert!(
            matches!(c.push(&body(), "b"), PushOutcome::Unknown { .. }),
            "{fault:?} must not acknowledge a push"
        );
    }
    sim.set_fault(Action::Push, Fault::None);
    assert_eq!(c.push(&body(), "b"), PushOutcome::Accepted);
    // Every applied attempt carried report id "b": the panel counted it once.
    assert_eq!(sim.totals(26)[&1], (1000, 2000));
    for r in sim.requests_for(Action::Push) {
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
}
