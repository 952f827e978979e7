"""Common English words, written out for the project's BPE tokenizer (`tokenizer.py`): the part
of its training corpus that is not the shapes world, so that merges exist for ordinary prompt
words and any other text splits into a few pieces rather than into single bytes.

Hand-written (no corpus ships with the installed packages), lower case, grouped loosely by
kind; the order does not matter (the corpus is counted, not read in order).
"""

from __future__ import annotations

_WORDS = """
a an the this that these those it its he she they we you i me him her them us my your his our
their mine yours who whom whose which what where when why how there here all any some no none
each every both either neither one two three four five six seven eight nine ten eleven twelve
twenty thirty forty fifty hundred thousand million first second third last next other another
same such only own more most less least much many few several enough half whole double single
and or but if then else so because while although though unless until since as than whether
not never always often sometimes usually again also just even still already yet soon now
today tonight tomorrow yesterday ago later early late before after during within without
about above across against along among around at behind below beneath beside between beyond
by down for from in inside into near of off on onto out outside over past through throughout
to toward towards under underneath up upon with via per around away back forward forwards
backward backwards together apart ahead aside left right top bottom middle centre center side
front rear north south east west upward upwards downward downwards sideways clockwise
be is am are was were been being have has had having do does did done doing will would shall
should can could may might must ought need dare get gets got getting go goes went gone going
make makes made making take takes took taken taking come comes came coming see sees saw seen
know knew known think thought look looks looked looking want give gave given use used find
found tell told ask asked work worked seem seemed feel felt try tried leave left call called
keep kept let begin began begun show showed shown hear heard play played run ran running move
moves moved moving live lived believe hold held bring brought happen happened write wrote
written provide sit sat stand stood lose lost pay paid meet met include continue set learn
change lead understand watch follow stop create speak read allow add spend grow open walk win
offer remember love consider appear buy wait serve die send expect build stay fall cut reach
kill remain suggest raise pass sell require report decide pull push carry break hit jump fly
flies flying flew swim swimming swims drive driving drove ride riding rides climb climbing
slide sliding slides roll rolling rolls spin spinning spins turn turning turns rotate rotating
rotates bounce bouncing bounces float floating floats fall falling falls rise rising rises
drop dropping drift drifting drifts glide gliding glides shake shaking wave waving dance
dancing sing singing eat eating drink drinking sleep sleeping smile smiling laugh laughing
cry crying talk talking shine shining glow glowing flash flashing blink blinking fade fading
grow growing shrink shrinking expand expanding zoom zooming pan panning tilt tilting travel
travelling traveling cross crossing enter entering exit exiting approach approaching follow
following chase chasing race racing hover hovering sway swaying wobble wobbling pulse pulsing
man woman men women child children boy girl baby person people friend family mother father
son daughter brother sister king queen doctor teacher student worker player artist driver
police soldier farmer cook team group crowd dog dogs cat cats bird birds fish horse horses cow
sheep pig chicken duck rabbit mouse lion tiger bear wolf fox deer elephant monkey snake frog
bee butterfly insect animal animals tree trees flower flowers grass leaf leaves plant plants
forest wood garden park field farm river lake sea ocean beach island mountain mountains hill
hills valley desert sky cloud clouds sun moon star stars rain snow ice wind storm fire water
earth land rock rocks stone sand road street city town village country world house home room
door window wall floor roof kitchen bed table chair desk box bag book books paper pen picture
photo photograph image video film movie camera screen light lights shadow shadows night day
morning evening afternoon time year years month week hour minute second moment life death
car cars bus train plane boat ship bike bicycle truck wheel engine machine robot computer
phone game ball balls toy toys food bread water milk coffee tea apple apples fruit cake
music song sound voice noise word words name story news letter number numbers line lines
point points part parts place places thing things way ways case fact problem question answer
idea reason result end start beginning state system program set area kind sort type form
level order power money business market job company service price cost value rate interest
health body head face eye eyes ear hair hand hands arm arms leg legs foot feet heart mind
shape shapes circle circles square squares triangle triangles rectangle oval ellipse
diamond star hexagon polygon cube sphere cone cylinder pyramid dot dots disc disk ring block
blocks object objects pattern patterns texture surface edge edges corner corners curve
background foreground scene view frame frames clip clips sequence motion speed direction
path track trail distance position size colour color colours colors shade tone
red green blue yellow orange purple pink brown black white grey gray gold silver magenta
cyan violet indigo teal turquoise navy maroon beige cream crimson scarlet lime olive
bright dark light pale deep vivid dull pastel neon glowing shiny matte transparent solid
big small large little tiny huge giant long short tall high low wide narrow thick thin
heavy round flat sharp smooth rough soft hard hot cold warm cool wet dry clean dirty empty
full open closed new old young fresh good bad best better worse worst great nice fine
beautiful pretty ugly happy sad angry calm quiet loud fast slow quick quickly slowly
easy difficult simple complex strong weak rich poor true false real fake right wrong
important possible impossible different similar early free sure certain clear whole
main major minor public private common special general local national human natural
social political economic various recent strange famous modern ancient simple plain
red blue beautiful realistic detailed cinematic colorful colourful abstract minimal
sunny cloudy rainy snowy foggy windy stormy misty dusty busy crowded lonely peaceful
gently softly smoothly steadily rapidly suddenly slightly very really quite rather too
almost nearly about exactly well badly straight across diagonally vertically horizontally
centered centred moving static still steady constant continuous repeating looping
walk walking walks run runs jumping jumps sit sitting stand standing lie lying look
make build play open close move shows shown show appears appear disappear disappears
becomes become stays remains keeps begins starts ends stops holds carries pulls pushes
say says said tell told call give gives let lets put puts set sets seem seems mean means
help helps turn turns start starts show shows try tries leave leaves put puts bring brings
"""

# Regular verbs and nouns whose inflected forms `common_words` adds (-s, -ing, -ed; plurals).
_VERBS = """
walk talk jump look play work call ask want need help start stop turn move open close show
watch follow pull push climb roll spin float drift glide bounce slide rise shake wave dance
smile laugh cry paint draw fill paste print add count point reach touch kick pick pack lift
drop hop skip step tap wash wipe clean cook bake boil heat cool warm light dim blink flash fade
glow shine burn melt pour spill splash sprinkle scatter gather collect join mix stir fold bend
stretch twist curl wrap cover hide reveal appear vanish rest wait stay remain return arrive
enter exit cross pass circle orbit loop swing sway rock tilt lean zoom pan track shift slip
trip land crash knock bump touch hug kiss greet visit explore search hunt chase race rush hurry
wander stroll march crawl creep sneak hover soar dive paddle row sail steer park load carry
deliver fetch toss roll bounce kick score guard protect attack defend play listen hum whistle
shout scream whisper type print sign mark learn study test check measure weigh compare count
sort order list name label create design plan form shape carve chop slice fix repair mend plant
water raise lower fill empty open lock unlock seal press squeeze grab
"""

_NOUNS = """
dog cat bird fish horse cow duck rabbit fox bear wolf deer frog bee insect animal tree
flower leaf plant hill mountain river lake forest field garden park road street city town
village house room door window wall floor roof table chair desk box bag book paper pen
picture photo image video film movie camera screen light shadow night day morning evening
year month week hour minute moment car bus train plane boat ship bike truck wheel engine
machine robot computer phone game ball toy apple fruit cake song sound voice noise word
name story letter number line point part place thing way case problem question answer idea
reason result system program area kind type form level price cost value head face eye ear
hand arm leg heart mind shape circle square triangle rectangle oval star dot disc ring block
object pattern texture surface edge corner curve background scene view frame clip sequence
motion speed direction path track trail distance position size colour color shade tone
person friend mother father brother sister teacher student worker player artist driver
cloud storm wave stone rock cup plate bowl spoon knife fork bottle glass bottle lamp clock
"""


_VOWELS = "aeiou"


def _verb_forms(verb: str) -> tuple[str, str, str, str]:
    """verb, -s, -ing, -ed by the regular spelling rules (drop a final e, y → ies / ied,
    double the last consonant of a one-vowel consonant-vowel-consonant verb)."""
    if verb.endswith("y") and verb[-2] not in _VOWELS:
        return verb, verb[:-1] + "ies", verb + "ing", verb[:-1] + "ied"
    if verb.endswith("e"):
        return verb, verb + "s", verb[:-1] + "ing", verb + "d"
    s = verb + ("es" if verb.endswith(("s", "sh", "ch", "x")) else "s")
    one_vowel = sum(c in _VOWELS for c in verb) == 1
    cvc = verb[-1] not in _VOWELS + "wxy" and verb[-2] in _VOWELS and verb[-3] not in _VOWELS
    stem = verb + verb[-1] if one_vowel and cvc else verb
    return verb, s, stem + "ing", stem + "ed"


def _plural(noun: str) -> str:
    if noun.endswith(("s", "sh", "ch", "x")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def common_words() -> tuple[str, ...]:
    """The words, each once, in first-appearance order: the list above, then the inflected
    forms of the regular verbs and nouns (a few irregular spellings among them do no harm: the
    corpus only teaches merges)."""
    verbs = [form for verb in _VERBS.split() for form in _verb_forms(verb)]
    nouns = [form for noun in _NOUNS.split() for form in (noun, _plural(noun))]
    return tuple(dict.fromkeys([*_WORDS.split(), *verbs, *nouns]))
