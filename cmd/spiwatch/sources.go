// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/spiwatch/spiwatch/internal/eventlog"
	"github.com/spiwatch/spiwatch/internal/knownset"
	"github.com/spiwatch/spiwatch/internal/report"
	"github.com/spiwatch/spiwatch/internal/sasource"
	"github.com/spiwatch/spiwatch/internal/sasource/file"
	"github.com/spiwatch/spiwatch/internal/sasource/vici"
	"github.com/spiwatch/spiwatch/internal/sasource/xfrm"
	"github.com/spiwatch/spiwatch/maps"
)

// xfrmAvailable asks whether the kernel can hold ESP states; a variable so tests
// take both branches whatever the kernel they run on.
var xfrmAvailable = xfrm.Available

// defaultSources is what spiwatch follows without --known-from: the kernel's SAs
// when it can hold ESP states, else nothing and why not (noXfrm).
func defaultSources() (specs []sasource.Spec, noXfrm error) {
	if err := xfrmAvailable(); err != nil {
		return nil, err
	}
	return []sasource.Spec{{Kind: "xfrm"}}, nil
}

// noXfrmNotice is said once at start when the default follows no xfrm: a gateway
// whose SAs live in the kernel would otherwise call every SPI unknown unexplained.
func noXfrmNotice(why error) string {
	return fmt.Sprintf("spiwatch: not following xfrm: %v; known SAs only from --known-spi and --known-file (--known-from names a source)\n", why)
}

// followsXfrm says whether one of the sources is the kernel's SA database, whose
// resyncs (a dump after lost events) need CAP_NET_ADMIN for as long as spiwatch runs.
func followsXfrm(specs []sasource.Spec) bool {
	for _, s := range specs {
		if s.Kind == "xfrm" {
			return true
		}
	}
	return false
}

// newSource makes the source a --known-from value names.
func newSource(spec sasource.Spec, reload <-chan struct{}) (sasource.Source, error) {
	switch spec.Kind {
	case "file":
		return file.New(spec.Arg, file.DefaultPoll, reload), nil
	case "xfrm":
		return xfrm.New(xfrm.Options{}), nil
	case "vici":
		return vici.New(spec.Arg), nil
	}
	return nil, fmt.Errorf("--known-from %s: this build has no %s source", spec, spec.Kind)
}

// startSources starts every known-SA source, each feeding its SAs into known.
// SIGHUP makes the file sources read their files again.
func startSources(ctx context.Context, specs []sasource.Spec, known *knownset.Set, rep sasource.Reporter) ([]sasource.Source, error) {
	if len(specs) == 0 {
		return nil, nil
	}
	// Caught before the sources start: a start can take long (a VICI socket that
	// does not answer holds it for 10 s), and SIGHUP's default ends the process.
	// One sent meanwhile reloads once they have started.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	var sources []sasource.Source
	var reloads []chan struct{}
	for _, spec := range specs {
		reload := make(chan struct{}, 1)
		src, err := newSource(spec, reload)
		if err == nil {
			name := src.Name()
			if err = src.Start(ctx, func(sas []maps.SA) error { return known.Update(name, sas) }, rep); err != nil {
				err = fmt.Errorf("known SAs from %s: %w", name, err)
			}
		}
		if err != nil {
			signal.Stop(hup)
			return nil, err
		}
		sources = append(sources, src)
		reloads = append(reloads, reload)
	}
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
			}
			for _, r := range reloads {
				select {
				case r <- struct{}{}:
				default: // one already pending
				}
			}
		}
	}()
	return sources, nil
}

// sourceLog tells stderr and the event log what the known-SA sources do.
type sourceLog struct {
	stderr io.Writer
	events *eventlog.Logger // nil: no event log
	known  *knownset.Set
	// started is set by Started, once every source has made its initial load.
	// The sources start one after another: a total said before then would leave
	// out those still to come (with an empty xfrm first, "0 in all").
	started atomic.Bool
}

func (l *sourceLog) Synced(src string, sas int) {
	if l.started.Load() {
		fmt.Fprintf(l.stderr, "spiwatch: known SAs from %s: %d (%s in all)\n", src, sas, report.Counted(l.known.Len(), "known SA"))
	} else {
		fmt.Fprintf(l.stderr, "spiwatch: known SAs from %s: %d\n", src, sas)
	}
	if l.events != nil {
		l.events.SourceSync(src, sas)
	}
}

func (l *sourceLog) Failed(src string, err error) {
	fmt.Fprintf(l.stderr, "spiwatch: %s: %v; keeping the previous %s\n", src, err, report.Counted(l.known.Len(), "known SA"))
	if l.events != nil {
		l.events.SourceError(src, err)
	}
}

// Started says, once every source has made its initial load, how many known
// SAs there are in all and how many each source gave; flagKnown are the
// --known-spi ones. Sync lines from then on give the total too.
func (l *sourceLog) Started(sources []sasource.Source, flagKnown []maps.SA) {
	l.started.Store(true)
	if len(sources) == 0 {
		return // the "N known SAs; reporting" line says it all
	}
	var parts []string
	if len(flagKnown) > 0 {
		distinct := map[maps.SA]bool{}
		for _, sa := range flagKnown {
			distinct[sa] = true
		}
		parts = append(parts, fmt.Sprintf("--known-spi %d", len(distinct)))
	}
	parts = append(parts, report.SourcesLine(sourceStats(sources)()))
	fmt.Fprintf(l.stderr, "spiwatch: known SAs at start: %d in all (%s)\n", l.known.Len(), strings.Join(parts, ", "))
}

func (l *sourceLog) Notice(src, msg string) {
	fmt.Fprintf(l.stderr, "spiwatch: %s: %s\n", src, msg)
	if l.events != nil {
		l.events.SourceNotice(src, msg)
	}
}

// sourceStats collects every source's health for the reports and metrics.
func sourceStats(sources []sasource.Source) func() []sasource.Stats {
	return func() []sasource.Stats {
		out := make([]sasource.Stats, 0, len(sources))
		for _, s := range sources {
			out = append(out, s.Stats())
		}
		return out
	}
}
