// Package rendezvous is where the proxy's scrapes meet the clients that
// carry them out.
//
// A scrape is one Prometheus request for a target, named by the target's
// FQDN. A carrier is a client connection that can take scrapes for an FQDN:
// a parked long poll (Poll), which takes one scrape and is then gone, or a
// tunnel (Attach), one long-lived connection that carries many scrapes at
// once, each as a stream of its own. A tunnel may also carry the scrapes of
// targets its client announces (Session.SetTargets), routed by their
// hosts and ports: a client's own FQDN takes scrapes of any port of it, a
// target (a tunnel's or a poll's, Client.Target) those of its own port,
// and of any port of its host only while no client of the host's own name
// is known (Scrape.Port). A Hub routes each scrape to a live carrier of
// its FQDN and port (tunnels with a free slot first, then the oldest
// parked poll), or queues it until one comes, within the scrape's
// context.
//
// # Concurrency contract
//
// Every method of Hub, Work, Claim, Answer and Session is safe to call from
// any goroutine. The Hub owns every channel it uses; callers only block in
// its methods, each of which returns when its context ends or the Hub shuts
// down. Scrape, Work and Claim values are handed from one goroutine to
// another only through the Hub.
//
// Each completion happens exactly once:
//
//   - A scrape is handed to at most one carrier at a time. A poll whose
//     context has ended is never handed one. A scrape whose poll could not
//     deliver it (Work.Undelivered) goes back to the front of its queue, or
//     to another live carrier, while its context lasts; a tunnel that did
//     not start on it (an error wrapping ErrNotCarried) has the same effect.
//   - A scrape handed to a poll is answered by at most one push: Claim
//     succeeds once per scrape ID, and only for the identity of the poll
//     that took it (ErrWrongClient otherwise). A claim of an ID that ended
//     fails at once (ErrExpiredID, ErrUnknownID), never waits.
//   - Scrape returns at most one Answer, and its caller must call
//     Answer.Done exactly once, with how relaying it ended; that is what
//     Claim.Deliver returns to the pushing client.
//   - Work returned by Poll must be completed with exactly one of Delivered
//     or Undelivered. A Session ends with one Detach; later calls do nothing.
//
// # Shutdown
//
// Shutdown refuses new polls, scrapes and tunnels, answers parked polls and
// queued scrapes with ErrShuttingDown, and lets scrapes already handed to a
// carrier finish. Drain waits until no scrape handed to a poll still waits
// for its push. Close stops the garbage collector and waits for it.
package rendezvous
