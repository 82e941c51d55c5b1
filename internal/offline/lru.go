// SPDX-License-Identifier: Apache-2.0

package offline

import "container/list"

// lru is a table of rows keyed by K that holds at most max of them, evicting
// the least recently used one to make room (max 0: no limit). It counts the
// rows it inserts, re-inserted ones included, so that evictions are inserts
// minus rows, as for the program's LRU tables.
type lru[K comparable, V any] struct {
	max     int
	order   *list.List // of *lruRow[K, V], most recently used first
	index   map[K]*list.Element
	inserts uint64
}

type lruRow[K comparable, V any] struct {
	key K
	val V
}

func newLRU[K comparable, V any](max int) *lru[K, V] {
	return &lru[K, V]{max: max, order: list.New(), index: map[K]*list.Element{}}
}

// use returns k's row, made (zero) if it is not there, and marks it the most
// recently used; fresh says it was made.
func (l *lru[K, V]) use(k K) (v *V, fresh bool) {
	if e := l.index[k]; e != nil {
		l.order.MoveToFront(e)
		return &e.Value.(*lruRow[K, V]).val, false
	}
	if l.max > 0 && l.order.Len() >= l.max {
		old := l.order.Remove(l.order.Back()).(*lruRow[K, V])
		delete(l.index, old.key)
	}
	r := &lruRow[K, V]{key: k}
	l.index[k] = l.order.PushFront(r)
	l.inserts++
	return &r.val, true
}

// peek returns k's row, or nil, leaving the order as it is.
func (l *lru[K, V]) peek(k K) *V {
	if e := l.index[k]; e != nil {
		return &e.Value.(*lruRow[K, V]).val
	}
	return nil
}

func (l *lru[K, V]) len() int { return l.order.Len() }

// each calls f on every row.
func (l *lru[K, V]) each(f func(K, *V)) {
	for e := l.order.Front(); e != nil; e = e.Next() {
		r := e.Value.(*lruRow[K, V])
		f(r.key, &r.val)
	}
}

// keep deletes the rows whose keys are not in the set.
func (l *lru[K, V]) keep(set map[K]bool) {
	for e := l.order.Front(); e != nil; {
		next := e.Next()
		if k := e.Value.(*lruRow[K, V]).key; !set[k] {
			l.order.Remove(e)
			delete(l.index, k)
		}
		e = next
	}
}
