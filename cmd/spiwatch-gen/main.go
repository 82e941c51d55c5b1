// SPDX-License-Identifier: Apache-2.0

// Command spiwatch-gen sends IPsec-like test traffic out of an interface with BPF
// live frames: the generator behind spiwatch's tests, demo and benchmarks. Use it only
// on interfaces of a lab (a veth pair in network namespaces): it sends what it is told.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/spiwatch/spiwatch/internal/trafficgen"
)

const usageHead = `spiwatch-gen sends test frames out of IFACE with BPF live frames (Linux 5.18+, root).

Usage:
  spiwatch-gen -i IFACE --send 'KIND key=value ...' [--send ...] [flags]

KIND is esp, esp-in-udp, ike, keepalive, fragment, tcp, udp or icmp-error. Keys: src,
dst, spi, seq, sport, dport, len, count, vlan=ID[,ID], marker=true (ike on a NAT-T
port), spis=N and srcs=N (cycle through N SPIs / source addresses), seqinc=true (the
ESP sequence number grows by one per frame from seq, as a real sender's does).
ike: version=1|2, exchange=IKE_SA_INIT|IKE_AUTH|CREATE_CHILD_SA|INFORMATIONAL|main|
aggressive|quick|informational|NUMBER, response=true, msgid=N.
icmp-error (from src to dst, quoting dst's own ESP to qdst): type, code, mtu,
quote=esp|esp-in-udp, qlen=N (quoted bytes after the quoted IP header, default 8),
qdst=ADDR (default src); default IPv4 frag-needed MTU 1400, IPv6 packet-too-big 1280.

Without --duration each stream sends count frames, streams interleaved, then the
generator prints what it sent as JSON. With --duration, count is frames per second
per stream, sent until the duration ends.

Flags:
`

type result struct {
	Stream string `json:"stream"`
	Frames int64  `json:"frames"`
}

func main() {
	var (
		iface    string
		sends    []string
		duration time.Duration
		chunk    int
		batch    uint32
	)
	fs := pflag.NewFlagSet("spiwatch-gen", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.StringVarP(&iface, "interface", "i", "", "interface to send from")
	fs.StringArrayVar(&sends, "send", nil, "a stream: 'KIND key=value ...' (repeatable)")
	fs.DurationVar(&duration, "duration", 0, "send for this long, count= being frames per second (0: send each count once)")
	fs.IntVar(&chunk, "chunk", 4096, "frames of one stream sent before moving to the next")
	fs.Uint32Var(&batch, "batch", 0, "live-frame batch size (0: kernel default, 64)")
	fs.Usage = func() { fmt.Fprint(os.Stderr, usageHead); fs.PrintDefaults() }
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "spiwatch-gen: %v\n", err)
		os.Exit(2)
	}
	if iface == "" || len(sends) == 0 || chunk < 1 {
		fmt.Fprintln(os.Stderr, "spiwatch-gen: need -i IFACE and at least one --send, and --chunk ≥ 1")
		os.Exit(2)
	}
	var streams []trafficgen.Stream
	for _, s := range sends {
		st, err := trafficgen.ParseStream(s)
		if err != nil {
			fmt.Fprintf(os.Stderr, "spiwatch-gen: %v\n", err)
			os.Exit(2)
		}
		streams = append(streams, st)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sent, elapsed, err := send(ctx, iface, streams, duration, chunk, batch)
	var out struct {
		Sent    []result `json:"sent"`
		Seconds float64  `json:"seconds"`
		Total   int64    `json:"total"`
	}
	for i, s := range sends {
		out.Sent = append(out.Sent, result{Stream: s, Frames: sent[i]})
		out.Total += sent[i]
	}
	out.Seconds = elapsed.Seconds()
	json.NewEncoder(os.Stdout).Encode(out)
	if err != nil {
		fmt.Fprintf(os.Stderr, "spiwatch-gen: %v\n", err)
		os.Exit(1)
	}
}

func send(ctx context.Context, iface string, streams []trafficgen.Stream, duration time.Duration, chunk int, batch uint32) ([]int64, time.Duration, error) {
	sent := make([]int64, len(streams))
	senders := make([]*trafficgen.Sender, len(streams))
	framesOf := make([][]byte, len(streams))
	for i, st := range streams {
		v, err := st.Vary()
		if err != nil {
			return sent, 0, err
		}
		if senders[i], err = trafficgen.NewSender(iface, v); err != nil {
			return sent, 0, err
		}
		defer senders[i].Close()
		senders[i].BatchSize = batch
		framesOf[i] = st.Build()
	}
	start := time.Now()
	// due returns how many frames stream i should have sent by now.
	due := func(i int) int64 {
		if duration == 0 {
			return int64(streams[i].Count)
		}
		el := min(time.Since(start), duration)
		return int64(el.Seconds() * float64(streams[i].Count))
	}
	for {
		if ctx.Err() != nil {
			return sent, time.Since(start), nil
		}
		idle := true
		for i := range streams {
			n := min(due(i)-sent[i], int64(chunk))
			if n <= 0 {
				continue
			}
			idle = false
			if err := senders[i].Send(framesOf[i], int(n)); err != nil {
				return sent, time.Since(start), err
			}
			sent[i] += n
		}
		if idle {
			if duration == 0 || time.Since(start) >= duration {
				return sent, time.Since(start), nil
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}
