// SPDX-License-Identifier: Apache-2.0

package trafficgen

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/frames"
	"github.com/spiwatch/spiwatch/internal/netlab"
	"github.com/spiwatch/spiwatch/internal/testenv"
)

// receiver is a packet socket on the lab's receiving interface.
type receiver struct {
	fd int
}

// listen opens a packet socket on the receiver, inside its namespace. The socket
// stays bound to that interface whichever thread reads it later.
func listen(t *testing.T, lab *netlab.Lab) *receiver {
	t.Helper()
	r := &receiver{fd: -1}
	err := netlab.In(lab.NSB, func() error {
		ifc, err := net.InterfaceByName(lab.Receiver)
		if err != nil {
			return err
		}
		proto := int(htons(unix.ETH_P_ALL))
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return fmt.Errorf("opening packet socket: %w", err)
		}
		r.fd = fd
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifc.Index}); err != nil {
			return fmt.Errorf("binding packet socket to %s: %w", lab.Receiver, err)
		}
		// Room for every frame of a burst: a veth frame's skb is about a page.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20); err != nil {
			return fmt.Errorf("growing the receive buffer: %w", err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_AUXDATA, 1); err != nil {
			return fmt.Errorf("asking for PACKET_AUXDATA: %w", err)
		}
		return r.wait(3 * time.Second)
	})
	if r.fd >= 0 {
		t.Cleanup(func() { unix.Close(r.fd) })
	}
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// wait sets how long next waits for a frame.
func (r *receiver) wait(d time.Duration) error {
	tv := unix.NsecToTimeval(d.Nanoseconds())
	return unix.SetsockoptTimeval(r.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// next returns the next frame that came in from the generator (source MAC
// frames.DefaultSrcMAC), as it was on the wire.
//
// The kernel takes the outer VLAN tag off a received frame (skb_vlan_untag in
// __netif_receive_skb_core) before packet sockets see it, and keeps it as metadata,
// which PACKET_AUXDATA hands over with each frame. next puts it back where it was,
// so the frame can be compared byte for byte; an inner 802.1Q tag under an 802.1ad
// one stays in the data.
func (r *receiver) next() ([]byte, error) {
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(int(unsafe.Sizeof(unix.TpacketAuxdata{}))))
	for {
		n, oobn, flags, from, err := unix.Recvmsg(r.fd, buf, oob, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) {
				return nil, errors.New("no frame came")
			}
			return nil, fmt.Errorf("receiving: %w", err)
		}
		if flags&unix.MSG_TRUNC != 0 {
			return nil, fmt.Errorf("frame of over %d bytes", len(buf))
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		frame := buf[:n]
		if n < 14 || !bytes.Equal(frame[6:12], frames.DefaultSrcMAC) {
			continue // not the generator's
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return nil, fmt.Errorf("reading control messages: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Level != unix.SOL_PACKET || m.Header.Type != unix.PACKET_AUXDATA ||
				len(m.Data) < int(unsafe.Sizeof(unix.TpacketAuxdata{})) {
				continue
			}
			aux := (*unix.TpacketAuxdata)(unsafe.Pointer(&m.Data[0]))
			if aux.Status&unix.TP_STATUS_VLAN_VALID == 0 {
				continue
			}
			tpid := uint16(frames.TPID8021Q)
			if aux.Status&unix.TP_STATUS_VLAN_TPID_VALID != 0 {
				tpid = aux.Vlan_tpid
			}
			tag := binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, tpid), aux.Vlan_tci)
			frame = append(append(append([]byte(nil), frame[:12]...), tag...), frame[12:]...)
		}
		return append([]byte(nil), frame...), nil
	}
}

// TestSendVarying sends varying streams through a veth pair and checks that every
// frame arrives, in order, exactly as Vary.Apply says: the generator's rewrites land
// on the right bytes, its sequence continues across Send calls, and nothing else of
// the frame changes.
func TestSendVarying(t *testing.T) {
	testenv.RequireNetns(t)
	for _, in := range []string{
		"esp spi=0x10000 spis=100 srcs=10 src=192.0.2.250",
		"esp-in-udp spi=0xc0000000 spis=100 srcs=10 sport=31000 len=100",
		"esp src=2001:db8::1:fffe dst=2001:db8::2 vlan=100 spi=0x2000 spis=100 srcs=10",
		"esp-in-udp src=2001:db8::1 dst=2001:db8::2 vlan=100,200 spi=0x3000 spis=100 srcs=7",
		// sequence numbers growing from seq, across the 32-bit wrap
		"esp spi=0x10000 spis=100 srcs=10 seqinc=true seq=0xfffffe00",
		"esp-in-udp src=2001:db8::1 dst=2001:db8::2 vlan=100 spi=0x3000 spis=3 srcs=2 seqinc=true seq=5",
	} {
		t.Run(in, func(t *testing.T) {
			st, err := ParseStream(in)
			if err != nil {
				t.Fatal(err)
			}
			v, err := st.Vary()
			if err != nil {
				t.Fatal(err)
			}
			frame := st.Build()
			lab, err := netlab.New("swtg")
			if err != nil {
				t.Fatalf("creating lab: %v", err)
			}
			t.Cleanup(func() {
				if err := lab.Close(); err != nil {
					t.Errorf("removing lab: %v", err)
				}
			})
			rx := listen(t, lab)

			// 1000 frames in bursts of different sizes, each read back before the
			// next, so that neither the veth ring nor the socket can overflow.
			var i uint64
			err = netlab.In(lab.NSA, func() error {
				s, err := NewSender(lab.Sender, v)
				if err != nil {
					return err
				}
				defer s.Close()
				for _, burst := range []int{1, 99, 250, 250, 400} {
					if err := s.Send(frame, burst); err != nil {
						return err
					}
					for range burst {
						got, err := rx.next()
						if err != nil {
							return fmt.Errorf("frame %d of 1000: %w", i, err)
						}
						want := v.Apply(frame, i)
						if !bytes.Equal(got, want) {
							return fmt.Errorf("frame %d:\n got %x\nwant %x", i, got, want)
						}
						i++
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			// Spot-check the meaning, not only the bytes: the last frame classifies
			// as its SPI from its source.
			r := classify.Classify(v.Apply(frame, 999), nil)
			if r.SPI != st.SPI+999%st.SPIs || r.Src != withLow(st.Frame.Src, lowOf(st.Frame.Src)+999%st.Srcs) {
				t.Errorf("frame 999: SPI 0x%x from %v", r.SPI, r.Src)
			}
			if wantSeq := st.Seq + 999; st.SeqInc && r.Seq != wantSeq || !st.SeqInc && r.Seq != st.Seq {
				t.Errorf("frame 999: sequence number %#x (seqinc %v from %#x)", r.Seq, st.SeqInc, st.Seq)
			}
			// Nothing more: no frame was sent twice.
			if err := rx.wait(200 * time.Millisecond); err != nil {
				t.Fatal(err)
			}
			if got, err := rx.next(); err == nil {
				t.Errorf("a frame after the 1000th: %x", got)
			}
		})
	}
}

// TestSendFromAnotherNamespace: a Sender made in the lab's namespace sends there
// even when Send is called from another namespace, where the same interface index
// names some other interface (in the root namespace, possibly a real NIC).
func TestSendFromAnotherNamespace(t *testing.T) {
	testenv.RequireNetns(t)
	lab, err := netlab.New("swtgns")
	if err != nil {
		t.Fatalf("creating lab: %v", err)
	}
	t.Cleanup(func() { lab.Close() })
	rx := listen(t, lab)
	var s *Sender
	if err := netlab.In(lab.NSA, func() error {
		s, err = NewSender(lab.Sender, Vary{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	frame, _ := ParseStream("esp spi=0x4242 count=1")
	// Called from the test's own namespace, on another thread for good measure.
	done := make(chan error)
	go func() { done <- s.Send(frame.Build(), 5) }()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		got, err := rx.next()
		if err != nil {
			t.Fatalf("frame %d of 5 did not arrive in the lab: %v", i, err)
		}
		if !bytes.Equal(got, frame.Build()) {
			t.Fatalf("frame %d: %x", i, got)
		}
	}
}
