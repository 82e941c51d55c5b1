// SPDX-License-Identifier: Apache-2.0

package offline

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/spiwatch/spiwatch/internal/capread"
	"github.com/spiwatch/spiwatch/internal/frames"
)

// TestPartialPcapng: a pcapng cut inside its last packet block (tcpdump killed,
// a full disk) is reported partial, not as a whole capture.
func TestPartialPcapng(t *testing.T) {
	var b bytes.Buffer
	w, err := pcapgo.NewNgWriter(&b, layers.LinkTypeEthernet)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		f := frames.Frame{}.ESP(0xdead0000+uint32(i), 1, 100)
		ci := gopacket.CaptureInfo{Timestamp: time.Unix(1700000000, 0), CaptureLength: len(f), Length: len(f)}
		if err := w.WritePacket(ci, f); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	cut := filepath.Join(t.TempDir(), "cut.pcapng")
	if err := os.WriteFile(cut, b.Bytes()[:b.Len()-20], 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Read(cut, Options{NoBPF: true})
	if s == nil || !errors.Is(err, capread.ErrTruncated) || s.Partial == "" {
		t.Fatalf("report %v, error %v: want a partial report and ErrTruncated", s != nil, err)
	}
	if n := s.Total.Now.Total().Packets; n != 2 {
		t.Errorf("%d packets counted, want the 2 complete ones", n)
	}
}
