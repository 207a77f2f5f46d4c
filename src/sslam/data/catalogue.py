"""The built-in sound-class catalogue and the AudioSet-schema ontology built from it.

The tree mirrors how AudioSet is shaped: abstract roots, labelled intermediate nodes, leaves that have
two parents ('Organ' is a 'Harmonic tone' and a 'Musical instrument'), and facet chains where parent and
child describe the same sound ('Music' > 'Musical instrument' > 'Plucked string instrument' > 'Harp
pluck'), so a clip with several labels may still hold a single source.
"""

from __future__ import annotations

from dataclasses import dataclass

from sslam.data import sounds as S
from sslam.data.audioset_format import OntologyNode
from sslam.data.sounds import SoundRecipe


@dataclass(frozen=True)
class Group:
    key: str
    name: str
    parents: tuple[str, ...]
    abstract: bool
    description: str


@dataclass(frozen=True)
class Leaf:
    name: str
    parents: tuple[str, ...]
    recipe: SoundRecipe
    description: str


GROUPS: tuple[Group, ...] = (
    Group("tonal", "Tonal sound", (), True, "Sounds dominated by stable pitched partials."),
    Group("harmonic", "Harmonic tone", ("tonal",), False, "Partials at integer multiples of a fundamental."),
    Group("bell", "Bell", ("tonal", "instrument"), False, "Struck resonators with inharmonic, decaying partials."),
    Group("modulated", "Modulated tone", ("tonal",), False, "Tones whose loudness or pitch oscillates."),
    Group("noise", "Noise", (), True, "Sounds without a clear pitch."),
    Group("environmental", "Environmental noise", ("noise",), False, "Band-limited noise of wind, water, engines."),
    Group("impulsive", "Impulsive sound", (), True, "Sounds made of short transients."),
    Group("clicking", "Clicking", ("impulsive",), False, "Repeated short clicks, knocks and taps."),
    Group("signal", "Signal sound", (), True, "Sounds made to draw attention."),
    Group("siren", "Siren", ("signal",), False, "A tone swept up and down repeatedly."),
    Group("whistle", "Whistle", ("signal",), False, "A single pitch glide."),
    Group("beep", "Beep, bleep", ("signal",), False, "A tone switched on and off."),
    Group("music", "Music", (), False, "Sounds produced to be heard as music."),
    Group("instrument", "Musical instrument", ("music",), False, "Sounds of an instrument being played."),
    Group("string", "Plucked string instrument", ("instrument",), False, "Strings set vibrating by a pluck."),
)


def _r(family, **kwargs) -> SoundRecipe:
    return SoundRecipe(family, kwargs)


# Ordered so that the first N leaves cover every family: num_classes takes a prefix of this list.
LEAVES: tuple[Leaf, ...] = (
    Leaf("Hum", ("harmonic",), _r(S.harmonic, f0=90.0, partials=6, rolloff=1.0), "A low mains-like hum."),
    Leaf("Church bell", ("bell",), _r(S.struck, f0=440.0, ratios=(0.5, 1.0, 1.2, 1.5, 2.0, 2.5, 3.0), decay_s=1.2), "A large tuned bell."),
    Leaf("Tremolo tone", ("modulated",), _r(S.amplitude_modulated, carrier=600.0, rate_hz=6.0, gated=False), "A tone pulsing in loudness."),
    Leaf("Rumble", ("environmental",), _r(S.noise_band, low=30.0, high=250.0), "Low-frequency noise."),
    Leaf("Ticking", ("clicking",), _r(S.impulses, rate_hz=2.0, low=2500.0, high=6000.0, decay_ms=2.0), "A clock-like tick."),
    Leaf("Wailing siren", ("siren",), _r(S.wail, low=600.0, high=1400.0, period_s=2.0), "A slow up-down siren."),
    Leaf("Rising whistle", ("whistle",), _r(S.sweep, f_start=900.0, f_end=3000.0), "A pitch glide upwards."),
    Leaf("Beeping", ("beep",), _r(S.amplitude_modulated, carrier=1000.0, rate_hz=2.0, gated=True), "A slow on-off beep."),
    Leaf("Low plucked string", ("string",), _r(S.plucked, f0=110.0, partials=12, decay_s=0.8), "A bass string pluck."),
    Leaf("Flute", ("instrument",), _r(S.harmonic, f0=520.0, partials=4, rolloff=2.5), "A soft, nearly pure wind tone."),
    Leaf("Buzzer", ("harmonic",), _r(S.harmonic, f0=420.0, partials=14, rolloff=1.0), "A bright buzzing tone."),
    Leaf("Chime", ("bell",), _r(S.struck, f0=1760.0, ratios=(1.0, 2.76, 5.4), decay_s=0.6), "A small high bell."),
    Leaf("Trill", ("modulated",), _r(S.frequency_modulated, carrier=1500.0, rate_hz=14.0, depth_hz=200.0), "A fast pitch wobble."),
    Leaf("Hiss", ("environmental",), _r(S.noise_band, low=4500.0, high=7800.0), "High-frequency noise."),
    Leaf("Knocking", ("clicking",), _r(S.impulses, rate_hz=4.0, low=60.0, high=400.0, decay_ms=15.0), "Low knocks on wood."),
    Leaf("Yelp siren", ("siren",), _r(S.wail, low=700.0, high=1600.0, period_s=0.35), "A fast up-down siren."),
    Leaf("Falling whistle", ("whistle",), _r(S.sweep, f_start=3000.0, f_end=900.0), "A pitch glide downwards."),
    Leaf("Fast beeping", ("beep",), _r(S.amplitude_modulated, carrier=2000.0, rate_hz=6.0, gated=True), "A quick on-off beep."),
    Leaf("High plucked string", ("string",), _r(S.plucked, f0=660.0, partials=8, decay_s=0.5), "A treble string pluck."),
    Leaf("Organ", ("harmonic", "instrument"), _r(S.harmonic, f0=196.0, partials=12, rolloff=1.2), "A sustained organ pipe."),
    Leaf("Horn", ("harmonic",), _r(S.harmonic, f0=330.0, partials=6, rolloff=0.7), "A brassy horn tone."),
    Leaf("Gong", ("bell",), _r(S.struck, f0=120.0, ratios=(1.0, 1.48, 1.93, 2.47, 3.1), decay_s=2.0), "A low struck gong."),
    Leaf("Vibrato tone", ("modulated",), _r(S.frequency_modulated, carrier=900.0, rate_hz=5.5, depth_hz=40.0), "A tone with gentle vibrato."),
    Leaf("Wind", ("environmental",), _r(S.noise_band, low=300.0, high=1200.0, swell_hz=0.4), "Swelling mid-band noise."),
    Leaf("Rattle", ("clicking",), _r(S.impulses, rate_hz=25.0, low=800.0, high=3000.0, decay_ms=3.0), "A dense rattling."),
    Leaf("Low siren", ("siren",), _r(S.wail, low=250.0, high=500.0, period_s=1.5), "A low civil-defence siren."),
    Leaf("Descending tone", ("whistle",), _r(S.sweep, f_start=1600.0, f_end=400.0, partials=3), "A slow downward glide."),
    Leaf("Alarm clock", ("beep",), _r(S.amplitude_modulated, carrier=3200.0, rate_hz=10.0, gated=True), "A shrill rapid beep."),
    Leaf("Harp pluck", ("string",), _r(S.plucked, f0=330.0, partials=10, decay_s=1.5), "A ringing mid-range pluck."),
    Leaf("Kalimba", ("instrument",), _r(S.struck, f0=700.0, ratios=(1.0, 5.4), decay_s=0.4), "A thumb-piano tine."),
    Leaf("Drone", ("harmonic",), _r(S.harmonic, f0=140.0, partials=3, rolloff=0.3), "A steady low drone."),
    Leaf("Bicycle bell", ("bell",), _r(S.struck, f0=2900.0, ratios=(1.0, 1.6, 2.3), decay_s=0.25), "A bright short ring."),
    Leaf("Warble", ("modulated",), _r(S.frequency_modulated, carrier=2400.0, rate_hz=3.0, depth_hz=400.0), "A wide slow pitch wobble."),
    Leaf("Surf", ("environmental",), _r(S.noise_band, low=150.0, high=3000.0, swell_hz=0.3), "Broad noise rising and falling."),
    Leaf("Engine putter", ("clicking",), _r(S.impulses, rate_hz=12.0, low=40.0, high=300.0, decay_ms=20.0), "A small engine's putter."),
    Leaf("Tapping", ("clicking",), _r(S.impulses, rate_hz=6.0, low=500.0, high=1500.0, decay_ms=5.0), "Light taps."),
    Leaf("Steam", ("environmental",), _r(S.noise_band, low=2000.0, high=4000.0), "A narrow noisy hiss of steam."),
    Leaf("Rain", ("environmental",), _r(S.impulses, rate_hz=90.0, low=1000.0, high=5000.0, decay_ms=0.8), "Many fine drops."),
    Leaf("Crackle", ("clicking",), _r(S.impulses, rate_hz=40.0, low=3000.0, high=7500.0, decay_ms=0.5), "Sparse high crackles."),
    Leaf("Tuning fork", ("bell",), _r(S.struck, f0=440.0, ratios=(1.0,), decay_s=3.0), "A pure decaying tone."),
)

MAX_CLASSES = len(LEAVES)


def group_id(index: int) -> str:
    return f"/t/sg{index:05d}"


def leaf_id(index: int) -> str:
    return f"/t/sy{index:05d}"


@dataclass(frozen=True)
class Catalogue:
    """The active part of the catalogue for a given num_classes, with its ontology."""

    leaf_ids: tuple[str, ...]
    recipes: dict[str, SoundRecipe]
    names: dict[str, str]
    nodes: tuple[OntologyNode, ...]
    parents: dict[str, tuple[str, ...]]
    abstract: frozenset[str]

    def labelled_ids(self) -> list[str]:
        """Ids that may appear as labels (non-abstract), in ontology order: the class index."""
        return [n.id for n in self.nodes if n.id not in self.abstract]

    def ancestors(self, node_id: str) -> list[str]:
        """All ancestors through any parent, nearest first, each once."""
        out: list[str] = []
        frontier = list(self.parents.get(node_id, ()))
        while frontier:
            nxt = []
            for p in frontier:
                if p not in out:
                    out.append(p)
                    nxt.extend(self.parents.get(p, ()))
            frontier = nxt
        return out


def build_catalogue(num_classes: int) -> Catalogue:
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must lie in 1..{MAX_CLASSES}, got {num_classes}")
    leaves = LEAVES[:num_classes]
    gid = {g.key: group_id(i) for i, g in enumerate(GROUPS)}
    # keep only groups with an active leaf below them
    used: set[str] = set()
    frontier = {p for leaf in leaves for p in leaf.parents}
    group_by_key = {g.key: g for g in GROUPS}
    while frontier:
        used |= frontier
        frontier = {p for k in frontier for p in group_by_key[k].parents} - used
    children: dict[str, list[str]] = {gid[k]: [] for k in used}
    parents: dict[str, tuple[str, ...]] = {}
    for g in GROUPS:
        if g.key in used:
            parents[gid[g.key]] = tuple(gid[p] for p in g.parents)
            for p in g.parents:
                children[gid[p]].append(gid[g.key])
    leaf_ids = tuple(leaf_id(i) for i in range(num_classes))
    for lid, leaf in zip(leaf_ids, leaves):
        parents[lid] = tuple(gid[p] for p in leaf.parents)
        for p in leaf.parents:
            children[gid[p]].append(lid)

    info = {gid[g.key]: (g.name, g.description, g.abstract) for g in GROUPS if g.key in used}
    info.update({lid: (leaf.name, leaf.description, False) for lid, leaf in zip(leaf_ids, leaves)})
    # depth-first pre-order from the roots, each node once (AudioSet's file is laid out the same way)
    order: list[str] = []
    roots = [gid[g.key] for g in GROUPS if g.key in used and not g.parents]

    def visit(node: str) -> None:
        if node in order:
            return
        order.append(node)
        for c in children.get(node, []):
            visit(c)

    for r in roots:
        visit(r)
    nodes = tuple(
        OntologyNode(
            id=i,
            name=info[i][0],
            description=info[i][1],
            child_ids=list(children.get(i, [])),
            restrictions=["abstract"] if info[i][2] else [],
        )
        for i in order
    )
    return Catalogue(
        leaf_ids=leaf_ids,
        recipes={lid: leaf.recipe for lid, leaf in zip(leaf_ids, leaves)},
        names={i: info[i][0] for i in order},
        nodes=nodes,
        parents=parents,
        abstract=frozenset(i for i in order if info[i][2]),
    )
