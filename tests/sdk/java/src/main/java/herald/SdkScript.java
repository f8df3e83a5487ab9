// Drives a server with the unmodified official Java SDK (centrifuge-java, pinned in
// ../../../../pom.xml) the way an application would, and checks what the SDK reports.
// scripts/install-tools.sh builds it into .tools/sdk-java/ (run it with
// java -cp '.tools/sdk-java/*' herald.SdkScript).
//
// centrifuge-java speaks the Protobuf flavour of the protocol only (WebSocket
// subprotocol `centrifuge-protobuf`).
//
// Run by tests/sdk.rs, which starts the server (Herald, or Centrifugo for the
// conformance run: nothing here is Herald-only) and passes, in the environment:
//   HERALD_WS                ws://host:port/connection/websocket (bob)
//   HERALD_WS_CUTTABLE       the same through a TCP proxy the harness can cut (alice)
//   HERALD_TOKEN_SHORT       alice's first connection token, valid a few seconds
//   HERALD_TOKEN             alice's token returned by the token getter (refresh)
//   HERALD_TOKEN_PUBLISHER   bob's token (the other client publishing)
//   HERALD_API               http://host:port/api (the server API)
//   HERALD_API_KEY           its key
//   HERALD_CHANNEL           a history channel, empty at start
//   HERALD_FORBIDDEN_CHANNEL a channel alice may not subscribe to (error 103)
//   HERALD_MISSED            how many publications alice misses while offline
//
// Alice connects through the harness's cuttable proxy: the script prints
// {"control":"cut"} (every connection dropped, no WebSocket close frame, new
// ones refused) or {"control":"restore"} on stdout and waits for a line
// `done` on stdin. Her network stays down while the backend publishes through
// the server API; the SDK notices and reconnects by itself.
//
// Its last stdout line is the report: {"ok":true,...} and exit 0, or
// {"ok":false,"error":...} and exit 1.
package herald;

import io.github.centrifugal.centrifuge.Client;
import io.github.centrifugal.centrifuge.ClientState;
import io.github.centrifugal.centrifuge.ConnectingEvent;
import io.github.centrifugal.centrifuge.ConnectionTokenEvent;
import io.github.centrifugal.centrifuge.ConnectionTokenGetter;
import io.github.centrifugal.centrifuge.DisconnectedEvent;
import io.github.centrifugal.centrifuge.ErrorEvent;
import io.github.centrifugal.centrifuge.EventListener;
import io.github.centrifugal.centrifuge.HistoryOptions;
import io.github.centrifugal.centrifuge.HistoryResult;
import io.github.centrifugal.centrifuge.Options;
import io.github.centrifugal.centrifuge.Publication;
import io.github.centrifugal.centrifuge.PublishResult;
import io.github.centrifugal.centrifuge.PublicationEvent;
import io.github.centrifugal.centrifuge.ReplyError;
import io.github.centrifugal.centrifuge.StreamPosition;
import io.github.centrifugal.centrifuge.SubscribedEvent;
import io.github.centrifugal.centrifuge.Subscription;
import io.github.centrifugal.centrifuge.SubscriptionErrorEvent;
import io.github.centrifugal.centrifuge.SubscriptionEventListener;
import io.github.centrifugal.centrifuge.SubscriptionState;
import io.github.centrifugal.centrifuge.TokenCallback;
import io.github.centrifugal.centrifuge.UnsubscribedEvent;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.lang.reflect.Field;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.BooleanSupplier;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public final class SdkScript {
    private static final long STEP_TIMEOUT_MS = 8000;

    private static final class Failure extends RuntimeException {
        Failure(String message) {
            super(message);
        }
    }

    private static String env(String name) {
        String v = System.getenv(name);
        if (v == null || v.isEmpty()) {
            throw new Failure("missing environment variable " + name);
        }
        return v;
    }

    private static void check(boolean cond, String what, Object details) {
        if (!cond) {
            throw new Failure(what + ": " + Json.write(details));
        }
    }

    /** Compares by JSON text, so lists, maps and numbers compare by value. */
    private static void eq(Object actual, Object expected, String what) {
        String a = Json.write(actual);
        String e = Json.write(expected);
        if (!a.equals(e)) {
            throw new Failure(what + ": {\"expected\":" + e + ",\"actual\":" + a + "}");
        }
    }

    /** Returns when cond holds; polls, bounded by STEP_TIMEOUT_MS. */
    private static void until(String what, BooleanSupplier cond) throws InterruptedException {
        long deadline = System.currentTimeMillis() + STEP_TIMEOUT_MS;
        while (!cond.getAsBoolean()) {
            if (System.currentTimeMillis() > deadline) {
                throw new Failure("timed out waiting for " + what);
            }
            Thread.sleep(10);
        }
    }

    private static final BufferedReader STDIN =
            new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));

    /** Asks the harness to "cut" or "restore" alice's network; returns once done. */
    private static void network(String action) throws Exception {
        System.out.println(Json.write(Map.of("control", action)));
        System.out.flush();
        eq(STDIN.readLine(), "done", "the harness confirms " + action);
    }

    private static final HttpClient HTTP = HttpClient.newHttpClient();

    /** Publishes through the server API; returns the offset it answers. */
    private static long apiPublish(String channel, String data) throws Exception {
        String body = "{\"channel\":" + Json.write(channel) + ",\"data\":" + data + "}";
        HttpRequest req = HttpRequest.newBuilder(URI.create(env("HERALD_API") + "/publish"))
                .timeout(Duration.ofMillis(STEP_TIMEOUT_MS))
                .header("Content-Type", "application/json")
                .header("X-API-Key", env("HERALD_API_KEY"))
                .POST(HttpRequest.BodyPublishers.ofString(body))
                .build();
        HttpResponse<String> resp = HTTP.send(req, HttpResponse.BodyHandlers.ofString());
        Matcher m = Pattern.compile("\"result\"\\s*:\\s*\\{[^}]*\"offset\"\\s*:\\s*(\\d+)").matcher(resp.body());
        check(resp.statusCode() == 200 && m.find(), "server API publish",
                Map.of("status", resp.statusCode(), "body", resp.body()));
        return Long.parseLong(m.group(1));
    }

    /** Publication data as compact JSON text (the SDK hands out bytes). */
    private static String data(byte[] bytes) {
        return Json.compact(new String(bytes, StandardCharsets.UTF_8));
    }

    private static Map<String, Object> plainPub(long offset, byte[] data, String user) {
        Map<String, Object> p = new LinkedHashMap<>();
        p.put("offset", offset);
        p.put("data", Json.raw(data(data)));
        p.put("user", user);
        return p;
    }

    private static Map<String, Object> pub(long offset, String data, String user) {
        return plainPub(offset, data.getBytes(StandardCharsets.UTF_8), user);
    }

    /**
     * A stream position's offset and epoch: centrifuge-java 0.4.1 keeps
     * StreamPosition's getters package-private, so they are read by reflection.
     */
    private static Map<String, Object> position(StreamPosition sp) {
        check(sp != null, "a stream position", null);
        try {
            Field offset = StreamPosition.class.getDeclaredField("offset");
            Field epoch = StreamPosition.class.getDeclaredField("epoch");
            offset.setAccessible(true);
            epoch.setAccessible(true);
            Map<String, Object> p = new LinkedHashMap<>();
            p.put("offset", offset.getLong(sp));
            p.put("epoch", epoch.get(sp));
            return p;
        } catch (ReflectiveOperationException e) {
            throw new Failure("cannot read a StreamPosition: " + e);
        }
    }

    /** Waits for a callback-style SDK call. */
    private static <T> T await(String what, java.util.function.Consumer<io.github.centrifugal.centrifuge.ResultCallback<T>> call)
            throws Exception {
        CompletableFuture<T> f = new CompletableFuture<>();
        call.accept((err, result) -> {
            if (err != null) {
                f.completeExceptionally(err);
            } else {
                f.complete(result);
            }
        });
        try {
            return f.get(STEP_TIMEOUT_MS, TimeUnit.MILLISECONDS);
        } catch (TimeoutException e) {
            throw new Failure("timed out waiting for " + what);
        } catch (ExecutionException e) {
            Throwable cause = e.getCause();
            if (cause instanceof ReplyError r) {
                throw new ReplyFailure(r);
            }
            throw new Failure(what + ": " + cause);
        }
    }

    /** A server's error reply to a call. */
    private static final class ReplyFailure extends Exception {
        final int code;

        ReplyFailure(ReplyError e) {
            super(e.getCode() + ": " + e.getMessage());
            this.code = e.getCode();
        }
    }

    private static String errorText(Throwable t) {
        if (t == null) {
            return null;
        }
        Throwable cause = t.getCause();
        if (t instanceof SubscriptionErrorEvent e) {
            cause = e.getError();
        }
        if (cause instanceof io.github.centrifugal.centrifuge.SubscriptionSubscribeError s) {
            cause = s.getError();
        }
        if (cause instanceof ReplyError r) {
            return "reply error " + r.getCode();
        }
        return t.getClass().getSimpleName() + (cause != null ? ": " + cause : "");
    }

    private static List<Long> offsets(HistoryResult h) {
        List<Long> out = new ArrayList<>();
        for (Publication p : h.getPublications()) {
            out.add(p.getOffset());
        }
        return out;
    }

    /** What the SDK's listeners saw, added to a failure report. */
    private static final Map<String, Object> EVENTS = Collections.synchronizedMap(new LinkedHashMap<>());

    private static Map<String, Object> failed(String error) {
        Map<String, Object> report = new LinkedHashMap<>();
        report.put("ok", false);
        report.put("error", error);
        synchronized (EVENTS) {
            report.put("events", Json.raw(Json.write(EVENTS)));
        }
        return report;
    }

    private static Map<String, Object> scenario() throws Exception {
        String ws = env("HERALD_WS");
        String channel = env("HERALD_CHANNEL");
        int missed = Integer.parseInt(env("HERALD_MISSED"));

        AtomicInteger getTokenCalls = new AtomicInteger();
        List<Integer> connecting = Collections.synchronizedList(new ArrayList<>());
        List<String> errors = Collections.synchronizedList(new ArrayList<>());
        List<SubscribedEvent> subscribed = Collections.synchronizedList(new ArrayList<>());
        List<Map<String, Object>> pubs = Collections.synchronizedList(new ArrayList<>());
        EVENTS.put("connecting", connecting);
        EVENTS.put("errors", errors);

        Options aliceOpts = new Options();
        aliceOpts.setToken(env("HERALD_TOKEN_SHORT"));
        aliceOpts.setTokenGetter(new ConnectionTokenGetter() {
            @Override
            public void getConnectionToken(ConnectionTokenEvent event, TokenCallback cb) {
                getTokenCalls.incrementAndGet();
                cb.Done(null, env("HERALD_TOKEN"));
            }
        });
        aliceOpts.setMinReconnectDelay(100);
        aliceOpts.setMaxReconnectDelay(400);
        Client alice = new Client(env("HERALD_WS_CUTTABLE"), aliceOpts, new EventListener() {
            @Override
            public void onConnecting(Client client, ConnectingEvent event) {
                connecting.add(event.getCode());
            }

            @Override
            public void onError(Client client, ErrorEvent event) {
                errors.add("error: " + errorText(event.getError()));
            }

            @Override
            public void onDisconnected(Client client, DisconnectedEvent event) {
                errors.add("disconnected: " + event.getCode() + " " + event.getReason());
            }
        });
        Options bobOpts = new Options();
        bobOpts.setToken(env("HERALD_TOKEN_PUBLISHER"));
        Client bob = new Client(ws, bobOpts, new EventListener() {});

        Subscription sub = alice.newSubscription(channel, new SubscriptionEventListener() {
            @Override
            public void onSubscribed(Subscription s, SubscribedEvent event) {
                subscribed.add(event);
            }

            @Override
            public void onPublication(Subscription s, PublicationEvent event) {
                // The SDK hands out an empty ClientInfo (Protobuf's default) for a
                // publication without info: no user.
                String user = event.getInfo() != null && !event.getInfo().getUser().isEmpty()
                        ? event.getInfo().getUser() : null;
                pubs.add(plainPub(event.getOffset(), event.getData(), user));
            }

            @Override
            public void onError(Subscription s, SubscriptionErrorEvent event) {
                errors.add("sub error: " + errorText(event));
            }

            @Override
            public void onUnsubscribed(Subscription s, UnsubscribedEvent event) {
                errors.add("unsubscribed: " + event.getCode() + " " + event.getReason());
            }
        });

        try {
            // 1–2. Connect with a token and subscribe to a history channel.
            alice.connect();
            bob.connect();
            sub.subscribe();
            until("subscribed", () -> subscribed.size() >= 1);
            until("bob connected", () -> bob.getState() == ClientState.CONNECTED);
            eq(subscribed.size(), 1, "one subscribed event");
            SubscribedEvent first = subscribed.get(0);
            eq(first.getRecoverable(), true, "history channel is recoverable");
            eq(first.wasRecovering(), false, "first subscribe is not a recovery");
            Map<String, Object> firstPosition = position(first.getStreamPosition());
            eq(firstPosition.get("offset"), 0L, "empty channel starts at offset 0");

            // 2b. A channel alice may not subscribe to: the subscription ends with 103.
            String forbiddenChannel = env("HERALD_FORBIDDEN_CHANNEL");
            List<Object> forbiddenEnds = Collections.synchronizedList(new ArrayList<>());
            List<String> forbiddenErrors = Collections.synchronizedList(new ArrayList<>());
            Subscription forbidden = alice.newSubscription(forbiddenChannel, new SubscriptionEventListener() {
                @Override
                public void onSubscribed(Subscription s, SubscribedEvent event) {
                    forbiddenEnds.add("subscribed");
                }

                @Override
                public void onUnsubscribed(Subscription s, UnsubscribedEvent event) {
                    forbiddenEnds.add(event.getCode());
                }

                @Override
                public void onError(Subscription s, SubscriptionErrorEvent event) {
                    forbiddenErrors.add(errorText(event));
                }
            });
            forbidden.subscribe();
            until("the forbidden subscription ends", () -> forbiddenEnds.size() >= 1);
            eq(forbiddenEnds, List.of(103), "forbidden channel: unsubscribed with 103 (permission denied)");
            eq(forbiddenErrors, List.of("reply error 103"), "forbidden channel: a subscribe error 103");
            eq(forbidden.getState().toString(), SubscriptionState.UNSUBSCRIBED.toString(), "forbidden subscription state");
            alice.removeSubscription(forbidden);

            // 3. Publications by someone else arrive with offsets 1, 2, 3.
            List<Object> expected = new ArrayList<>();
            for (int i = 0; i < 3; i++) {
                String d = "{\"from\":\"bob\",\"i\":" + i + "}";
                SdkScript.<PublishResult>await("bob publishes", cb -> bob.publish(channel, d.getBytes(StandardCharsets.UTF_8), cb));
                expected.add(pub(i + 1, d, "bob"));
            }
            until("3 publications from bob", () -> pubs.size() >= 3);
            eq(new ArrayList<>(pubs).subList(0, 3), expected, "bob's publications as alice sees them");

            // 4. Publish from the SDK; history by limit, since and reverse.
            SdkScript.<PublishResult>await("alice publishes", cb -> sub.publish("{\"from\":\"alice\"}".getBytes(StandardCharsets.UTF_8), cb));
            until("alice's own publication", () -> pubs.size() >= 4);
            eq(pubs.get(3), pub(4, "{\"from\":\"alice\"}", "alice"), "alice's own publication");

            HistoryResult all = await("history limit 10",
                    cb -> sub.history(new HistoryOptions.Builder().withLimit(10).build(), cb));
            eq(offsets(all), List.of(1L, 2L, 3L, 4L), "history limit 10");
            List<Object> data = new ArrayList<>();
            for (Publication p : all.getPublications()) {
                data.add(Json.raw(data(p.getData())));
            }
            eq(data, List.of(Json.raw("{\"from\":\"bob\",\"i\":0}"), Json.raw("{\"from\":\"bob\",\"i\":1}"),
                    Json.raw("{\"from\":\"bob\",\"i\":2}"), Json.raw("{\"from\":\"alice\"}")), "history data");
            Publication firstPub = all.getPublications().get(0);
            eq(firstPub.getInfo() != null ? firstPub.getInfo().getUser() : null, "bob", "history carries publisher info");
            eq(all.getOffset(), 4L, "history stream top");
            String epoch = all.getEpoch();
            check(epoch != null && !epoch.isEmpty(), "history epoch", epoch);
            HistoryResult top = await("history limit 0",
                    cb -> sub.history(new HistoryOptions.Builder().withLimit(0).build(), cb));
            eq(Arrays.asList(top.getPublications().size(), top.getOffset(), top.getEpoch()),
                    Arrays.asList(0, 4L, epoch), "history limit 0: position only");
            HistoryResult since = await("history since", cb -> sub.history(new HistoryOptions.Builder()
                    .withLimit(2).withSince(new StreamPosition(1, epoch)).build(), cb));
            eq(offsets(since), List.of(2L, 3L), "history since offset 1, limit 2");
            HistoryResult newest = await("history reverse", cb -> sub.history(new HistoryOptions.Builder()
                    .withLimit(2).withReverse(true).build(), cb));
            eq(offsets(newest), List.of(4L, 3L), "history reverse, limit 2");
            HistoryResult before = await("history reverse since", cb -> sub.history(new HistoryOptions.Builder()
                    .withLimit(2).withSince(new StreamPosition(4, epoch)).withReverse(true).build(), cb));
            eq(offsets(before), List.of(3L, 2L), "history reverse since offset 4, limit 2");
            Integer wrongEpoch = null;
            try {
                SdkScript.<HistoryResult>await("history since another epoch", cb -> sub.history(new HistoryOptions.Builder()
                        .withLimit(2).withSince(new StreamPosition(1, "not-" + epoch)).build(), cb));
            } catch (ReplyFailure e) {
                wrongEpoch = e.code;
            }
            eq(wrongEpoch, 112, "history since a position of another epoch is unrecoverable");

            // 1 (refresh). The first token is short-lived: the SDK asks the token
            // getter for a new one and refreshes the connection without reconnecting.
            until("the token getter called for a refresh", () -> getTokenCalls.get() >= 1);
            HistoryResult afterRefresh = await("history after the refresh",
                    cb -> sub.history(new HistoryOptions.Builder().withLimit(0).build(), cb));
            eq(afterRefresh.getOffset(), 4L, "connection works after the refresh");
            eq(connecting, List.of(0), "no reconnect so far (only the initial connect)");

            // 5. Cut alice's network; the backend publishes through the server API
            // while she is away; the SDK reconnects on its own and recovers exactly
            // what she missed.
            int beforeDrop = pubs.size();
            network("cut");
            until("alice notices the drop",
                    () -> connecting.size() >= 2 && sub.getState() == SubscriptionState.SUBSCRIBING);
            for (int i = 0; i < missed; i++) {
                eq(apiPublish(channel, "{\"missed\":" + i + "}"), 5L + i, "server API publish offset");
            }
            eq(pubs.size(), beforeDrop, "nothing reaches alice while her network is down");
            network("restore");
            until("resubscribed", () -> subscribed.size() >= 2);
            SubscribedEvent rec = subscribed.get(1);
            eq(Arrays.asList(rec.wasRecovering(), rec.getRecovered()), List.of(true, true),
                    "resubscribe recovered the missed publications");
            Map<String, Object> recPosition = position(rec.getStreamPosition());
            // The reply's offset is server-specific (the harness checks it): Herald
            // sends the stream top, Centrifugo the position recovered from.
            eq(recPosition.get("epoch"), epoch, "same epoch after recovery");
            until(missed + " recovered publications", () -> pubs.size() >= 4 + missed);

            // Then live ones again.
            SdkScript.<PublishResult>await("bob publishes live", cb -> bob.publish(channel, "{\"live\":0}".getBytes(StandardCharsets.UTF_8), cb));
            eq(apiPublish(channel, "{\"live\":1}"), 6L + missed, "server API publish offset");
            until("2 live publications after recovery", () -> pubs.size() >= 6 + missed);
            Thread.sleep(100);

            List<Map<String, Object>> got = new ArrayList<>(pubs);
            List<Object> recovered = new ArrayList<>();
            for (int i = 0; i < missed; i++) {
                recovered.add(pub(5 + i, "{\"missed\":" + i + "}", null));
            }
            eq(got.subList(4, 4 + missed), recovered,
                    "recovered publications (server API publications carry no client info)");
            eq(got.subList(4 + missed, got.size()),
                    List.of(pub(5 + missed, "{\"live\":0}", "bob"), pub(6 + missed, "{\"live\":1}", null)),
                    "live after recovery");
            List<Long> gotOffsets = new ArrayList<>();
            List<Long> wanted = new ArrayList<>();
            for (int i = 0; i < got.size(); i++) {
                gotOffsets.add((Long) got.get(i).get("offset"));
                wanted.add(i + 1L);
            }
            eq(got.size(), 6 + missed, "every publication once");
            eq(gotOffsets, wanted, "every offset once, in order");
            eq(connecting, List.of(0, 1), "connecting events: initial connect, then transport closed");
            List<String> otherErrors = new ArrayList<>();
            for (String e : new ArrayList<>(errors)) {
                if (!e.startsWith("error: ") || e.contains("reply error")) {
                    otherErrors.add(e);
                }
            }
            eq(otherErrors, List.of(), "no errors but the transport ones of the drop");

            Map<String, Object> recovery = new LinkedHashMap<>();
            recovery.put("was_recovering", rec.wasRecovering());
            recovery.put("recovered", rec.getRecovered());
            recovery.put("offset", recPosition.get("offset"));
            Map<String, Object> report = new LinkedHashMap<>();
            report.put("ok", true);
            report.put("offsets", gotOffsets);
            report.put("epoch", epoch);
            report.put("get_token_calls", getTokenCalls.get());
            report.put("forbidden", Map.of("channel", forbiddenChannel, "code", forbiddenEnds.get(0)));
            report.put("first_position", firstPosition);
            report.put("connecting", connecting);
            report.put("errors", errors);
            report.put("recovery", recovery);
            return report;
        } finally {
            alice.close(1000);
            bob.close(1000);
        }
    }

    public static void main(String[] args) {
        Map<String, Object> report;
        CompletableFuture<Map<String, Object>> run = CompletableFuture.supplyAsync(() -> {
            try {
                return scenario();
            } catch (Failure e) {
                return failed(e.getMessage());
            } catch (Exception e) {
                return failed(e.toString());
            }
        });
        try {
            report = run.get(25, TimeUnit.SECONDS);
        } catch (Exception e) {
            report = failed("script timed out or failed: " + e);
        }
        System.out.println(Json.write(report));
        System.out.flush();
        System.exit(Objects.equals(report.get("ok"), true) ? 0 : 1);
    }

    /** Just enough JSON for the report: writes maps, lists, strings, numbers, booleans, null. */
    static final class Json {
        /** JSON text to embed as is. */
        record Raw(String text) {}

        static Raw raw(String text) {
            return new Raw(text);
        }

        /** JSON text without insignificant whitespace (none of this script's strings hold any). */
        static String compact(String text) {
            return text.replaceAll("\\s", "");
        }

        static String write(Object v) {
            StringBuilder sb = new StringBuilder();
            write(sb, v);
            return sb.toString();
        }

        private static void write(StringBuilder sb, Object v) {
            if (v == null) {
                sb.append("null");
            } else if (v instanceof Raw r) {
                sb.append(r.text());
            } else if (v instanceof String s) {
                sb.append('"');
                for (char c : s.toCharArray()) {
                    switch (c) {
                        case '"' -> sb.append("\\\"");
                        case '\\' -> sb.append("\\\\");
                        case '\n' -> sb.append("\\n");
                        default -> {
                            if (c < 0x20) {
                                sb.append(String.format("\\u%04x", (int) c));
                            } else {
                                sb.append(c);
                            }
                        }
                    }
                }
                sb.append('"');
            } else if (v instanceof Number || v instanceof Boolean) {
                sb.append(v);
            } else if (v instanceof Map<?, ?> m) {
                sb.append('{');
                boolean first = true;
                for (Map.Entry<?, ?> e : m.entrySet()) {
                    if (!first) {
                        sb.append(',');
                    }
                    first = false;
                    write(sb, String.valueOf(e.getKey()));
                    sb.append(':');
                    write(sb, e.getValue());
                }
                sb.append('}');
            } else if (v instanceof List<?> list) {
                List<?> l;
                synchronized (list) {
                    l = new ArrayList<>(list);
                }
                sb.append('[');
                for (int i = 0; i < l.size(); i++) {
                    if (i > 0) {
                        sb.append(',');
                    }
                    write(sb, l.get(i));
                }
                sb.append(']');
            } else {
                write(sb, v.toString());
            }
        }
    }
}
