// Mesh: "who owns shard 417 and is it behind?" The dispatchers as the admin service hears them,
// every shard's lease and lag as Postgres has them, and drain / undrain / rebalance.
import { useState } from "preact/hooks";
import type { Dispatcher, Shard } from "../../../../shared/src/gen/admin/v1/admin_pb.js";
import { useSession } from "../api.js";
import { ConfirmDialog, PageHead } from "../components.js";
import { count, dateOf, relative, span, utc } from "../format.js";
import { usePoll } from "../poll.js";

/** Lag bands of the shard map, in seconds; a shard above the last is red. */
const LAG_BANDS = [0, 1, 10, 60] as const;
/** Owner colours (console.css .owner-0 … .owner-11); owners beyond share them in turn. */
const OWNER_COLOURS = 12;

type Action =
  | { kind: "drain"; dispatcher: string }
  | { kind: "undrain"; dispatcher: string }
  | { kind: "rebalance" };

export function MeshPage() {
  const { api } = useSession();
  const polled = usePoll(async () => {
    const [dispatchers, shards, stats] = await Promise.all([
      api.admin.listDispatchers({}),
      api.admin.listShards({}),
      api.admin.getStats({}),
    ]);
    return {
      dispatchers: dispatchers.dispatchers,
      shards: shards.shards,
      shardCount: shards.shardCount,
      stats,
    };
  }, "mesh");
  const [colourBy, setColourBy] = useState<"lag" | "owner">("lag");
  const [selected, setSelected] = useState<number | undefined>(undefined);
  const [action, setAction] = useState<Action | undefined>(undefined);
  const data = polled.data;
  const owners = [...new Set((data?.shards ?? []).map((s) => s.owner).filter(Boolean))].sort();

  return (
    <section>
      <PageHead title="Mesh" polled={polled} />
      {data && (
        <>
          <dl class="stats" data-testid="mesh-stats">
            <Stat label="live dispatchers" value={data.stats.liveDispatchers} />
            <Stat label="active timers" value={data.stats.activeTimers} />
            <Stat label="due now (backlog)" value={data.stats.dueNow} />
            <Stat label="fired last minute" value={data.stats.firedLastMinute} />
            <Stat label="failed last hour" value={data.stats.failedLastHour} />
            <Stat label="paused groups" value={data.stats.pausedGroups} />
          </dl>
          <Dispatchers dispatchers={data.dispatchers} onAction={setAction} />
          <h3>
            Shards <span class="muted">({count(data.shardCount)})</span>
          </h3>
          <div class="toolbar">
            <label>
              Colour by{" "}
              <select
                value={colourBy}
                onChange={(e) => setColourBy((e.currentTarget.value as "lag" | "owner") ?? "lag")}
              >
                <option value="lag">lag</option>
                <option value="owner">owner</option>
              </select>
            </label>
            <label>
              Find shard{" "}
              <input
                type="number"
                name="shard"
                min={0}
                max={data.shardCount - 1}
                value={selected ?? ""}
                onInput={(e) => {
                  const n = Number.parseInt(e.currentTarget.value, 10);
                  setSelected(Number.isInteger(n) ? n : undefined);
                }}
              />
            </label>
            <Legend colourBy={colourBy} owners={owners} />
          </div>
          <ShardMap
            shards={data.shards}
            colourBy={colourBy}
            owners={owners}
            selected={selected}
            onSelect={setSelected}
          />
          {selected !== undefined && <ShardDetail shard={data.shards.find((s) => s.shard === selected)} />}
        </>
      )}
      {action && (
        <ActionDialog
          action={action}
          dispatchers={data?.dispatchers ?? []}
          onClose={() => setAction(undefined)}
          onDone={polled.reload}
        />
      )}
    </section>
  );
}

function Stat(props: { label: string; value: number | bigint }) {
  return (
    <div>
      <dt>{props.label}</dt>
      <dd>{count(props.value)}</dd>
    </div>
  );
}

function Dispatchers(props: { dispatchers: Dispatcher[]; onAction: (a: Action) => void }) {
  return (
    <>
      <div class="page-head">
        <h3>Dispatchers</h3>
        <button type="button" onClick={() => props.onAction({ kind: "rebalance" })}>
          Rebalance…
        </button>
      </div>
      <table data-testid="dispatchers">
        <thead>
          <tr>
            <th>id</th>
            <th>state</th>
            <th>version</th>
            <th>uptime</th>
            <th class="num">owned shards</th>
            <th class="num">in flight</th>
            <th>last heartbeat</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {props.dispatchers.map((d) => {
            const started = dateOf(d.startTime);
            return (
              <tr key={d.id} data-dispatcher={d.id}>
                <td>
                  <code>{d.id}</code>
                  <div class="muted">{d.address}</div>
                </td>
                <td>
                  <span class={`badge ${d.live ? (d.draining ? "warn" : "good") : "bad"}`}>
                    {d.live ? (d.draining ? "draining" : "live") : "not heard"}
                  </span>
                </td>
                <td>{d.version || "–"}</td>
                <td>{started ? span(Date.now() - started.getTime()) : "–"}</td>
                <td class="num">{count(d.ownedShards)}</td>
                <td class="num">{count(d.inFlight)}</td>
                <td>{d.lastHeartbeatTime ? relative(d.lastHeartbeatTime) : "–"}</td>
                <td>
                  {d.live &&
                    (d.draining ? (
                      <button
                        type="button"
                        onClick={() => props.onAction({ kind: "undrain", dispatcher: d.id })}
                      >
                        Undrain…
                      </button>
                    ) : (
                      <button
                        type="button"
                        onClick={() => props.onAction({ kind: "drain", dispatcher: d.id })}
                      >
                        Drain…
                      </button>
                    ))}
                </td>
              </tr>
            );
          })}
        </tbody>
      </table>
      {props.dispatchers.length === 0 && <p class="warn-text">No dispatcher is heard on NATS.</p>}
    </>
  );
}

/** The shard's lag band: how many of LAG_BANDS' thresholds its lag is above (0 to 4). */
function lagBand(s: Shard): number {
  return LAG_BANDS.filter((threshold) => s.lagSeconds > threshold).length;
}

/** A lag band in words, from the same thresholds that colour the cells. */
function lagBandLabel(band: number): string {
  const low = LAG_BANDS[band - 1];
  const high = LAG_BANDS[band];
  if (low === undefined) return "no lag";
  if (high === undefined) return `> ${low} s`;
  return low === 0 ? `< ${high} s` : `${low}–${high} s`;
}

function cellClass(s: Shard, colourBy: "lag" | "owner", owners: string[], selected: boolean): string {
  const base = selected ? "cell selected" : "cell";
  if (!s.leased) return `${base} unowned`;
  if (colourBy === "lag") return `${base} lag-${lagBand(s)}`;
  return `${base} owner-${owners.indexOf(s.owner) % OWNER_COLOURS}`;
}

function ShardMap(props: {
  shards: Shard[];
  colourBy: "lag" | "owner";
  owners: string[];
  selected: number | undefined;
  onSelect: (shard: number) => void;
}) {
  return (
    // Each cell is a button: a click (or Enter) shows the shard's lease and backlog below.
    <div class="shard-map" data-testid="shard-map">
      {props.shards.map((s) => (
        <button
          type="button"
          key={s.shard}
          class={cellClass(s, props.colourBy, props.owners, s.shard === props.selected)}
          data-shard={s.shard}
          aria-label={`shard ${s.shard}`}
          title={`shard ${s.shard} · ${s.leased ? s.owner : "no owner"} · lag ${s.lagSeconds.toFixed(1)} s · ${s.dueCount} due`}
          onClick={() => props.onSelect(s.shard)}
        />
      ))}
    </div>
  );
}

function Legend(props: { colourBy: "lag" | "owner"; owners: string[] }) {
  if (props.colourBy === "lag") {
    return (
      <ul class="legend">
        {Array.from({ length: LAG_BANDS.length + 1 }, (_, band) => (
          <li key={band}>
            <i class={`cell lag-${band}`} />
            {lagBandLabel(band)}
          </li>
        ))}
        <li>
          <i class="cell unowned" />
          no owner
        </li>
      </ul>
    );
  }
  return (
    <ul class="legend">
      {props.owners.map((o, i) => (
        <li key={o}>
          <i class={`cell owner-${i % OWNER_COLOURS}`} />
          {o}
        </li>
      ))}
      <li>
        <i class="cell unowned" />
        no owner
      </li>
    </ul>
  );
}

function ShardDetail(props: { shard: Shard | undefined }) {
  const s = props.shard;
  if (!s) return <p class="muted">No such shard.</p>;
  return (
    <dl class="detail" data-testid="shard-detail">
      <dt>shard</dt>
      <dd>{s.shard}</dd>
      <dt>owner</dt>
      <dd>
        {s.leased ? (
          <code>{s.owner}</code>
        ) : (
          <span class="warn-text">no owner: lease released or expired</span>
        )}
      </dd>
      <dt>epoch</dt>
      <dd>{String(s.epoch)}</dd>
      <dt>lease expires</dt>
      <dd>
        {utc(s.leaseExpireTime)} {relative(s.leaseExpireTime)}
      </dd>
      <dt>lag</dt>
      <dd class={s.lagSeconds > 1 ? "warn-text" : ""}>
        {s.lagSeconds > 0 ? `${span(s.lagSeconds * 1000)} behind` : "not behind"}
      </dd>
      <dt>due now</dt>
      <dd>{count(s.dueCount)}</dd>
    </dl>
  );
}

function ActionDialog(props: {
  action: Action;
  dispatchers: Dispatcher[];
  onClose: () => void;
  onDone: () => void;
}) {
  const { api } = useSession();
  const a = props.action;
  const run = async (): Promise<string> => {
    try {
      if (a.kind === "drain") {
        const r = await api.admin.drainDispatcher({ dispatcherId: a.dispatcher });
        return `${r.dispatcherId} drained: released ${r.releasedShards} shard(s)`;
      }
      const r = await api.admin.rebalanceShards({ undrain: a.kind === "undrain" ? [a.dispatcher] : [] });
      const replies = r.replies.map((x) => `${x.dispatcherId} ${x.draining ? "draining" : "taking shards"}`);
      const missing = r.missing.length ? `; no answer from ${r.missing.join(", ")}` : "";
      return `Rebalanced: ${replies.join(", ") || "no dispatcher answered"}${missing}`;
    } finally {
      props.onDone();
    }
  };
  // Draining the last dispatcher that takes shards stops all firing: say so before, not after.
  const target = a.kind === "rebalance" ? undefined : a.dispatcher;
  const othersTaking = props.dispatchers.filter((d) => d.live && !d.draining && d.id !== target).length;
  const text =
    a.kind === "drain"
      ? othersTaking > 0
        ? `Dispatcher ${a.dispatcher} releases every shard it holds and takes none until undrained. The ${othersTaking} other(s) take its shards over.`
        : `Dispatcher ${a.dispatcher} is the only one taking shards: once drained, NOTHING FIRES until it is undrained (or another dispatcher joins).`
      : a.kind === "undrain"
        ? `Dispatcher ${a.dispatcher} takes shards again; the mesh rebalances.`
        : "Every live dispatcher recomputes its shards from the current membership.";
  return (
    <ConfirmDialog
      title={
        a.kind === "drain"
          ? "Drain dispatcher"
          : a.kind === "undrain"
            ? "Undrain dispatcher"
            : "Rebalance shards"
      }
      confirmLabel={a.kind === "drain" ? "Drain" : a.kind === "undrain" ? "Undrain" : "Rebalance"}
      onConfirm={run}
      onClose={props.onClose}
    >
      <p>{text}</p>
    </ConfirmDialog>
  );
}
