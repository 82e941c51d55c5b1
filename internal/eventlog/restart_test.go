// SPDX-License-Identifier: Apache-2.0

package eventlog

import (
	"strings"
	"testing"

	"github.com/spiwatch/spiwatch/maps"
)

// TestTableEvictingAfterPinnedRestart: spiwatch run --pin started again reads
// the evictions of the previous run; a table that does not evict now is not
// said to be evicting.
func TestTableEvictingAfterPinnedRestart(t *testing.T) {
	l, b, _ := newLogger(t, "logfmt")
	for _, ev := range []uint64{5000, 5000, 5000} {
		l.Table(maps.TableStats{Entries: 10, Capacity: 64, Evictions: ev})
	}
	if strings.Contains(b.String(), "table_evicting") {
		t.Errorf("evictions from before the start logged as evicting now:\n%s", b.String())
	}
	l.Table(maps.TableStats{Entries: 64, Capacity: 64, Evictions: 5001})
	if !strings.Contains(b.String(), "event=table_evicting") {
		t.Errorf("no line when the table starts evicting:\n%s", b.String())
	}
}

// TestLogfmtQuotesControl: a value with control characters (a carriage return
// in a source's error, an escape in an interface name) is quoted and escaped,
// so it cannot forge a line or drive the terminal of whoever reads the log.
func TestLogfmtQuotesControl(t *testing.T) {
	for _, v := range []string{"a\rlevel=error", "eth\x1b[2J0", "x\x00y", "a\\b"} {
		got := logfmtValue(v)
		if strings.ContainsAny(got, "\r\x1b\x00") {
			t.Errorf("logfmtValue(%q) = %q: control characters left raw", v, got)
		}
	}
}
