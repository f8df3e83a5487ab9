// Drives a server with the unmodified official Go SDK (centrifuge-go, pinned
// in go.mod) the way an application would, and checks what the SDK reports.
// scripts/install-tools.sh builds it into .tools/sdk-go/centrifuge-go-script.
//
// Run by tests/sdk.rs, which starts the server (Herald, or Centrifugo for the
// conformance run: nothing here is Herald-only) and passes, in the environment:
//
//	HERALD_WS                ws://host:port/connection/websocket (bob)
//	HERALD_WS_CUTTABLE       the same through a TCP proxy the harness can cut (alice)
//	HERALD_TOKEN_SHORT       alice's first connection token, valid a few seconds
//	HERALD_TOKEN             alice's token returned by GetToken (refresh)
//	HERALD_TOKEN_PUBLISHER   bob's token (the other client publishing)
//	HERALD_API               http://host:port/api (the server API)
//	HERALD_API_KEY           its key
//	HERALD_CHANNEL           a history channel, empty at start
//	HERALD_FORBIDDEN_CHANNEL a channel alice may not subscribe to (error 103)
//	HERALD_MISSED            how many publications alice misses while offline
//	HERALD_SDK_DEBUG=1       the SDK's debug log on stderr
//
// Alice connects through the harness's cuttable proxy: the script prints
// {"control":"cut"} (every connection dropped, no WebSocket close frame, new
// ones refused) or {"control":"restore"} on stdout and waits for a line
// `done` on stdin. Her network stays down while the backend publishes through
// the server API; the SDK notices and reconnects by itself.
//
// Its last stdout line is the report: {"ok":true,...} and exit 0, or
// {"ok":false,"error":...} and exit 1.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"reflect"
	"strconv"
	"sync"
	"time"

	"github.com/centrifugal/centrifuge-go"
)

const stepTimeout = 8 * time.Second

type failure struct{ msg string }

func (f failure) Error() string { return f.msg }

// fail ends the scenario with a failure report (recovered in main).
func fail(format string, args ...any) {
	panic(failure{fmt.Sprintf(format, args...)})
}

func env(name string) string {
	v := os.Getenv(name)
	if v == "" {
		fail("missing environment variable %s", name)
	}
	return v
}

func jsonText(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprintf("%#v", v)
	}
	return string(b)
}

// eq compares through JSON, so numbers, slices and maps compare by value.
func eq(actual, expected any, what string) {
	a, e := jsonText(actual), jsonText(expected)
	var av, ev any
	_ = json.Unmarshal([]byte(a), &av)
	_ = json.Unmarshal([]byte(e), &ev)
	if !reflect.DeepEqual(av, ev) {
		fail("%s: {\"expected\":%s,\"actual\":%s}", what, e, a)
	}
}

func check(cond bool, what string, details any) {
	if !cond {
		fail("%s: %s", what, jsonText(details))
	}
}

// until returns when cond() holds; polls, bounded by stepTimeout.
func until(what string, cond func() bool) {
	deadline := time.Now().Add(stepTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			fail("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ctx() context.Context {
	c, cancel := context.WithTimeout(context.Background(), stepTimeout)
	time.AfterFunc(stepTimeout, cancel)
	return c
}

var stdin = bufio.NewScanner(os.Stdin)

// network asks the harness to "cut" or "restore" alice's network; returns
// once done.
func network(action string) {
	fmt.Println(jsonText(map[string]string{"control": action}))
	if !stdin.Scan() {
		fail("the harness closed stdin instead of confirming %s", action)
	}
	eq(stdin.Text(), "done", "the harness confirms "+action)
}

// apiPublish publishes through the server API; returns the offset it answers.
func apiPublish(channel string, data any) uint64 {
	body := jsonText(map[string]any{"channel": channel, "data": data})
	req, err := http.NewRequestWithContext(ctx(), http.MethodPost, env("HERALD_API")+"/publish", bytes.NewBufferString(body))
	check(err == nil, "server API request", fmt.Sprint(err))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", env("HERALD_API_KEY"))
	resp, err := http.DefaultClient.Do(req)
	check(err == nil, "server API publish", fmt.Sprint(err))
	defer resp.Body.Close()
	var reply struct {
		Result *struct {
			Offset uint64 `json:"offset"`
		} `json:"result"`
		Error any `json:"error"`
	}
	err = json.NewDecoder(resp.Body).Decode(&reply)
	check(err == nil && resp.StatusCode == 200 && reply.Result != nil, "server API publish",
		map[string]any{"status": resp.StatusCode, "error": reply.Error, "decode": fmt.Sprint(err)})
	return reply.Result.Offset
}

func jsonData(b []byte) any {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return string(b)
	}
	return v
}

type pub struct {
	Offset uint64 `json:"offset"`
	Data   any    `json:"data"`
	User   any    `json:"user"`
}

func plainPub(p centrifuge.Publication) pub {
	var user any
	if p.Info != nil {
		user = p.Info.User
	}
	return pub{Offset: p.Offset, Data: jsonData(p.Data), User: user}
}

// events is what the SDK's handlers saw, read under its lock.
type events struct {
	mu            sync.Mutex
	connecting    []map[string]any
	errors        []map[string]any
	subscribed    []centrifuge.SubscribedEvent
	pubs          []pub
	forbiddenEnds []map[string]any
	getTokenCalls int
}

func (e *events) with(f func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	f()
}

func (e *events) count(f func() int) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return f()
}

func (e *events) pubsCopy() []pub {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]pub(nil), e.pubs...)
}

func serverCode(err error) any {
	var e *centrifuge.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return err.Error()
}

func scenario() map[string]any {
	ws := env("HERALD_WS")
	channel := env("HERALD_CHANNEL")
	missed, err := strconv.Atoi(env("HERALD_MISSED"))
	check(err == nil, "HERALD_MISSED is a number", env("HERALD_MISSED"))
	logLevel := centrifuge.LogLevelNone
	if os.Getenv("HERALD_SDK_DEBUG") == "1" {
		logLevel = centrifuge.LogLevelDebug
	}
	logHandler := func(e centrifuge.LogEntry) { fmt.Fprintf(os.Stderr, "%s %v\n", e.Message, e.Fields) }

	ev := &events{}
	alice := centrifuge.NewJsonClient(env("HERALD_WS_CUTTABLE"), centrifuge.Config{
		Token: env("HERALD_TOKEN_SHORT"),
		GetToken: func(centrifuge.ConnectionTokenEvent) (string, error) {
			ev.with(func() { ev.getTokenCalls++ })
			return env("HERALD_TOKEN"), nil
		},
		MinReconnectDelay: 100 * time.Millisecond,
		MaxReconnectDelay: 400 * time.Millisecond,
		LogLevel:          logLevel,
		LogHandler:        logHandler,
	})
	bob := centrifuge.NewJsonClient(ws, centrifuge.Config{
		Token:      env("HERALD_TOKEN_PUBLISHER"),
		LogLevel:   logLevel,
		LogHandler: logHandler,
	})
	defer alice.Close()
	defer bob.Close()

	alice.OnConnecting(func(e centrifuge.ConnectingEvent) {
		ev.with(func() { ev.connecting = append(ev.connecting, map[string]any{"code": e.Code, "reason": e.Reason}) })
	})
	alice.OnError(func(e centrifuge.ErrorEvent) {
		var transport centrifuge.TransportError
		kind := "error"
		if errors.As(e.Error, &transport) {
			kind = "transport"
		}
		ev.with(func() { ev.errors = append(ev.errors, map[string]any{"type": kind, "error": e.Error.Error()}) })
	})
	alice.OnDisconnected(func(e centrifuge.DisconnectedEvent) {
		ev.with(func() {
			ev.errors = append(ev.errors, map[string]any{"type": "disconnected", "code": e.Code, "reason": e.Reason})
		})
	})

	sub, err := alice.NewSubscription(channel)
	check(err == nil, "new subscription", fmt.Sprint(err))
	sub.OnSubscribed(func(e centrifuge.SubscribedEvent) {
		ev.with(func() { ev.subscribed = append(ev.subscribed, e) })
	})
	sub.OnPublication(func(e centrifuge.PublicationEvent) {
		ev.with(func() { ev.pubs = append(ev.pubs, plainPub(e.Publication)) })
	})
	sub.OnError(func(e centrifuge.SubscriptionErrorEvent) {
		ev.with(func() { ev.errors = append(ev.errors, map[string]any{"type": "sub error", "error": e.Error.Error()}) })
	})
	sub.OnUnsubscribed(func(e centrifuge.UnsubscribedEvent) {
		ev.with(func() {
			ev.errors = append(ev.errors, map[string]any{"type": "unsubscribed", "code": e.Code, "reason": e.Reason})
		})
	})
	nSubscribed := func() int { return ev.count(func() int { return len(ev.subscribed) }) }
	nPubs := func() int { return ev.count(func() int { return len(ev.pubs) }) }

	// 1–2. Connect with a token and subscribe to a history channel.
	check(alice.Connect() == nil, "alice connects", nil)
	check(bob.Connect() == nil, "bob connects", nil)
	check(sub.Subscribe() == nil, "subscribe", nil)
	until("subscribed", func() bool { return nSubscribed() >= 1 })
	until("bob connected", func() bool { return bob.State() == centrifuge.StateConnected })
	subscribedAt := func(i int) (e centrifuge.SubscribedEvent) {
		ev.with(func() { e = ev.subscribed[i] })
		return e
	}
	first := subscribedAt(0)
	eq(nSubscribed(), 1, "one subscribed event")
	eq(first.Recoverable, true, "history channel is recoverable")
	eq(first.WasRecovering, false, "first subscribe is not a recovery")
	check(first.StreamPosition != nil, "subscribed carries a stream position", nil)
	eq(first.StreamPosition.Offset, 0, "empty channel starts at offset 0")

	// 2b. A channel alice may not subscribe to: the subscription ends with 103.
	forbiddenChannel := env("HERALD_FORBIDDEN_CHANNEL")
	forbidden, err := alice.NewSubscription(forbiddenChannel)
	check(err == nil, "new forbidden subscription", fmt.Sprint(err))
	var forbiddenErrors []any
	forbidden.OnError(func(e centrifuge.SubscriptionErrorEvent) {
		ev.with(func() { forbiddenErrors = append(forbiddenErrors, serverCode(e.Error)) })
	})
	forbidden.OnSubscribed(func(centrifuge.SubscribedEvent) {
		ev.with(func() { ev.forbiddenEnds = append(ev.forbiddenEnds, map[string]any{"subscribed": true}) })
	})
	forbidden.OnUnsubscribed(func(e centrifuge.UnsubscribedEvent) {
		ev.with(func() { ev.forbiddenEnds = append(ev.forbiddenEnds, map[string]any{"code": e.Code}) })
	})
	check(forbidden.Subscribe() == nil, "subscribe to the forbidden channel", nil)
	until("the forbidden subscription ends", func() bool { return ev.count(func() int { return len(ev.forbiddenEnds) }) >= 1 })
	ev.with(func() {
		eq(ev.forbiddenEnds, []map[string]any{{"code": 103}}, "forbidden channel: unsubscribed with 103 (permission denied)")
		eq(forbiddenErrors, []any{103}, "forbidden channel: a subscribe error 103")
	})
	eq(forbidden.State(), centrifuge.SubStateUnsubscribed, "forbidden subscription state")
	check(alice.RemoveSubscription(forbidden) == nil, "remove the forbidden subscription", nil)

	// 3. Publications by someone else arrive with offsets 1, 2, 3.
	for i := 0; i < 3; i++ {
		_, err := bob.Publish(ctx(), channel, []byte(jsonText(map[string]any{"from": "bob", "i": i})))
		check(err == nil, "bob publishes", fmt.Sprint(err))
	}
	until("3 publications from bob", func() bool { return nPubs() >= 3 })
	expected := []pub{}
	for i := 0; i < 3; i++ {
		expected = append(expected, pub{Offset: uint64(i + 1), Data: map[string]any{"from": "bob", "i": i}, User: "bob"})
	}
	eq(ev.pubsCopy()[:3], expected, "bob's publications as alice sees them")

	// 4. Publish from the SDK; history by limit, since and reverse.
	_, err = sub.Publish(ctx(), []byte(`{"from":"alice"}`))
	check(err == nil, "alice publishes", fmt.Sprint(err))
	until("alice's own publication", func() bool { return nPubs() >= 4 })
	eq(ev.pubsCopy()[3], pub{Offset: 4, Data: map[string]any{"from": "alice"}, User: "alice"}, "alice's own publication")

	offsets := func(h centrifuge.HistoryResult) []uint64 {
		out := []uint64{}
		for _, p := range h.Publications {
			out = append(out, p.Offset)
		}
		return out
	}
	all, err := sub.History(ctx(), centrifuge.WithHistoryLimit(10))
	check(err == nil, "history limit 10", fmt.Sprint(err))
	eq(offsets(all), []uint64{1, 2, 3, 4}, "history limit 10")
	data := []any{}
	for _, p := range all.Publications {
		data = append(data, jsonData(p.Data))
	}
	eq(data, []any{
		map[string]any{"from": "bob", "i": 0}, map[string]any{"from": "bob", "i": 1},
		map[string]any{"from": "bob", "i": 2}, map[string]any{"from": "alice"},
	}, "history data")
	check(all.Publications[0].Info != nil && all.Publications[0].Info.User == "bob", "history carries publisher info", nil)
	eq(all.Offset, 4, "history stream top")
	epoch := all.Epoch
	check(epoch != "", "history epoch", epoch)
	top, err := sub.History(ctx(), centrifuge.WithHistoryLimit(0))
	check(err == nil, "history limit 0", fmt.Sprint(err))
	eq([]any{len(top.Publications), top.Offset, top.Epoch}, []any{0, 4, epoch}, "history limit 0: position only")
	since, err := sub.History(ctx(), centrifuge.WithHistoryLimit(2),
		centrifuge.WithHistorySince(&centrifuge.StreamPosition{Offset: 1, Epoch: epoch}))
	check(err == nil, "history since", fmt.Sprint(err))
	eq(offsets(since), []uint64{2, 3}, "history since offset 1, limit 2")
	newest, err := sub.History(ctx(), centrifuge.WithHistoryLimit(2), centrifuge.WithHistoryReverse(true))
	check(err == nil, "history reverse", fmt.Sprint(err))
	eq(offsets(newest), []uint64{4, 3}, "history reverse, limit 2")
	before, err := sub.History(ctx(), centrifuge.WithHistoryLimit(2), centrifuge.WithHistoryReverse(true),
		centrifuge.WithHistorySince(&centrifuge.StreamPosition{Offset: 4, Epoch: epoch}))
	check(err == nil, "history reverse since", fmt.Sprint(err))
	eq(offsets(before), []uint64{3, 2}, "history reverse since offset 4, limit 2")
	_, err = sub.History(ctx(), centrifuge.WithHistoryLimit(2),
		centrifuge.WithHistorySince(&centrifuge.StreamPosition{Offset: 1, Epoch: "not-" + epoch}))
	check(err != nil, "history since a position of another epoch fails", nil)
	eq(serverCode(err), 112, "history since a position of another epoch is unrecoverable")

	// 1 (refresh). The first token is short-lived: the SDK asks GetToken for a
	// new one and refreshes the connection without reconnecting.
	until("GetToken called for a refresh", func() bool { return ev.count(func() int { return ev.getTokenCalls }) >= 1 })
	afterRefresh, err := sub.History(ctx())
	check(err == nil, "history after the refresh", fmt.Sprint(err))
	eq(afterRefresh.Offset, 4, "connection works after the refresh")
	connectingCodes := func() []uint32 {
		var codes []uint32
		ev.with(func() {
			for _, c := range ev.connecting {
				codes = append(codes, c["code"].(uint32))
			}
		})
		return codes
	}
	eq(connectingCodes(), []uint32{0}, "no reconnect so far (only the initial connect)")

	// 5. Cut alice's network; the backend publishes through the server API
	// while she is away; the SDK reconnects on its own and recovers exactly
	// what she missed.
	beforeDrop := nPubs()
	network("cut")
	until("alice notices the drop", func() bool {
		return len(connectingCodes()) >= 2 && sub.State() == centrifuge.SubStateSubscribing
	})
	for i := 0; i < missed; i++ {
		eq(apiPublish(channel, map[string]any{"missed": i}), 5+i, "server API publish offset")
	}
	eq(nPubs(), beforeDrop, "nothing reaches alice while her network is down")
	network("restore")
	until("resubscribed", func() bool { return nSubscribed() >= 2 })
	rec := subscribedAt(1)
	eq([]bool{rec.WasRecovering, rec.Recovered}, []bool{true, true}, "resubscribe recovered the missed publications")
	check(rec.StreamPosition != nil, "the resubscribe carries a stream position", nil)
	// The reply's offset is server-specific (the harness checks it): Herald
	// sends the stream top, Centrifugo the position recovered from.
	eq(rec.StreamPosition.Epoch, epoch, "same epoch after recovery")
	until(fmt.Sprintf("%d recovered publications", missed), func() bool { return nPubs() >= 4+missed })

	// Then live ones again.
	_, err = bob.Publish(ctx(), channel, []byte(`{"live":0}`))
	check(err == nil, "bob publishes live", fmt.Sprint(err))
	eq(apiPublish(channel, map[string]any{"live": 1}), 6+missed, "server API publish offset")
	until("2 live publications after recovery", func() bool { return nPubs() >= 6+missed })
	time.Sleep(100 * time.Millisecond)

	pubs := ev.pubsCopy()
	recovered := []pub{}
	for i := 0; i < missed; i++ {
		recovered = append(recovered, pub{Offset: uint64(5 + i), Data: map[string]any{"missed": i}})
	}
	eq(pubs[4:4+missed], recovered, "recovered publications (server API publications carry no client info)")
	eq(pubs[4+missed:], []pub{
		{Offset: uint64(5 + missed), Data: map[string]any{"live": 0}, User: "bob"},
		{Offset: uint64(6 + missed), Data: map[string]any{"live": 1}},
	}, "live after recovery")
	gotOffsets := []uint64{}
	wanted := []uint64{}
	for i, p := range pubs {
		gotOffsets = append(gotOffsets, p.Offset)
		wanted = append(wanted, uint64(i+1))
	}
	eq(len(pubs), 6+missed, "every publication once")
	eq(gotOffsets, wanted, "every offset once, in order")
	eq(connectingCodes(), []uint32{0, 1}, "connecting events: initial connect, then transport closed")
	var otherErrors []map[string]any
	ev.with(func() {
		for _, e := range ev.errors {
			if e["type"] != "transport" {
				otherErrors = append(otherErrors, e)
			}
		}
	})
	eq(otherErrors, []map[string]any(nil), "no errors but the transport ones of the drop")

	return map[string]any{
		"ok":              true,
		"offsets":         gotOffsets,
		"epoch":           epoch,
		"get_token_calls": ev.count(func() int { return ev.getTokenCalls }),
		"forbidden":       map[string]any{"channel": forbiddenChannel, "code": ev.forbiddenEnds[0]["code"]},
		"first_position":  map[string]any{"offset": first.StreamPosition.Offset, "epoch": first.StreamPosition.Epoch},
		"connecting":      ev.connecting,
		"recovery": map[string]any{
			"was_recovering": rec.WasRecovering,
			"recovered":      rec.Recovered,
			"offset":         rec.StreamPosition.Offset,
		},
	}
}

func main() {
	done := make(chan map[string]any, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				if f, ok := r.(failure); ok {
					done <- map[string]any{"ok": false, "error": f.msg}
				} else {
					done <- map[string]any{"ok": false, "error": fmt.Sprint(r)}
				}
			}
		}()
		done <- scenario()
	}()
	var report map[string]any
	select {
	case report = <-done:
	case <-time.After(25 * time.Second):
		report = map[string]any{"ok": false, "error": "script timed out"}
	}
	fmt.Println(jsonText(report))
	if report["ok"] != true {
		os.Exit(1)
	}
}
